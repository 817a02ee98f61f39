"""Typed exceptions of the SDK, one per row of torpor's error table.

A failed call raises the class for its HTTP status (and, where one status has several
meanings, its error `code`); every one carries `status`, `message`, `type` and `code` from
the OpenAI error envelope the server sent. `FunctionError` is an exception raised by user
code in a function's worker, with the remote traceback text.
"""

from __future__ import annotations

from typing import Any


class TorporError(Exception):
    """Any failed call. `status` is 0 when no HTTP answer came (connection, timeout)."""

    status: int = 0

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str = "",
        code: str = "",
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.type = type
        self.code = code
        self.body = body

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, message={self.message!r}, "
            f"code={self.code!r})"
        )


class APIConnectionError(TorporError):
    """torpor could not be reached, or did not answer in time."""


class APITimeoutError(APIConnectionError):
    pass


class BadRequestError(TorporError):
    status = 400


class AuthenticationError(TorporError):
    status = 401


class PermissionDeniedError(TorporError):
    status = 403


class NotFoundError(TorporError):
    status = 404


class RequestTimeoutError(TorporError):
    status = 408


class ConflictError(TorporError):
    status = 409


class PayloadTooLargeError(TorporError):
    status = 413


class InvalidSpecError(TorporError):
    status = 422


class RateLimitError(TorporError):
    """429: the queue is full (retry later) or a budget is exceeded (code budget_exceeded)."""

    status = 429


class InternalServerError(TorporError):
    status = 500


class WorkerError(TorporError):
    status = 502


class NoCapacityError(TorporError):
    status = 503


class WorkerStartingError(TorporError):
    status = 504


class DeploymentFailedError(TorporError):
    """A deployment's setup ended `failed` while waiting for it (reason in the message)."""


class FunctionError(TorporError):
    """User code raised in a function's worker: `remote_type` names the exception class and
    `remote_traceback` holds the worker's traceback text."""

    def __init__(self, message: str, *, remote_type: str, remote_traceback: str, **kw: Any):
        super().__init__(message, **kw)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.message}\n\nRemote traceback:\n{self.remote_traceback}"


FUNCTION_ERROR_CODE = "function_error"

_BY_STATUS: dict[int, type[TorporError]] = {
    cls.status: cls
    for cls in (
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        RequestTimeoutError,
        ConflictError,
        PayloadTooLargeError,
        InvalidSpecError,
        RateLimitError,
        InternalServerError,
        WorkerError,
        NoCapacityError,
        WorkerStartingError,
    )
}


def error_for(status: int, body: Any, fallback: str) -> TorporError:
    """The typed exception for an answer: status `status`, parsed JSON `body` (or None)."""
    message, type_, code = fallback, "", ""
    error: Any = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        type_ = str(error.get("type") or "")
        code = str(error.get("code") or "")
        if code == FUNCTION_ERROR_CODE:
            return FunctionError(
                message,
                remote_type=str(error.get("exception") or ""),
                remote_traceback=str(error.get("traceback") or ""),
                status=status,
                type=type_,
                code=code,
                body=body,
            )
    elif isinstance(error, str):
        message = error
    elif isinstance(body, dict) and "detail" in body:
        message = str(body["detail"])
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else BadRequestError
    return cls(message, status=status, type=type_, code=code, body=body)
