"""Every exception class of torpor's server side, and the one function that renders the
OpenAI error envelope.

`TorporError` and its subclasses are what callers see (status, type, code); the others are
raised and caught inside torpor. Defined elsewhere, on purpose (docs/architecture.md,
checked by tests/test_layers.py): the SDK's own hierarchy (`torpor.sdk.errors`, what a
client catches) and the exceptions of code that runs in a worker's own environment
(`torpor.functions.server`, `torpor.llamacpp_worker`).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class TorporError(Exception):
    """Base error: carries the HTTP status and the OpenAI error `type` and `code`."""

    status = 500
    type = "server_error"
    code = "internal_error"
    default_message = "Request failed, please retry"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        self.message = message or self.default_message
        self.headers = headers or {}
        super().__init__(self.message)


class BadRequest(TorporError):
    status = 400
    type = "invalid_request_error"
    code = "bad_request"
    default_message = "Bad request"


class PayloadTooLarge(TorporError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"
    default_message = "Request body too large"


class InvalidSpec(TorporError):
    status = 422
    type = "invalid_request_error"
    code = "invalid_spec"
    default_message = "Invalid deployment spec"


class Unauthorized(TorporError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    default_message = "Missing or invalid API key"


class Forbidden(TorporError):
    status = 403
    type = "permission_error"
    code = "forbidden"
    default_message = "This API key may not use this resource"


class QuotaExceeded(TorporError):
    """A per-key storage cap (stored conversations, messages) is reached."""

    status = 403
    type = "permission_error"
    code = "quota_exceeded"
    default_message = "Quota exceeded"


class NotFound(TorporError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    default_message = "Not found"


class DeploymentUnavailable(NotFound):
    code = "deployment_not_found"
    default_message = "Deployment not found or not running"


class Conflict(TorporError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"
    default_message = "Conflict"


class RequestTimeout(TorporError):
    status = 408
    type = "timeout_error"
    code = "request_timeout"
    default_message = "Request timeout"


class QueueFull(TorporError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"
    default_message = "Server busy, please retry"


class UpstreamError(TorporError):
    status = 502
    type = "server_error"
    code = "worker_error"
    default_message = "Worker returned an error, please retry"


class InferenceTimeout(TorporError):
    """The worker took the request but did not answer within the request timeout."""

    status = 504
    type = "timeout_error"
    code = "inference_timeout"
    default_message = "Inference timed out"


class ShuttingDown(TorporError):
    """torpor is stopping: requests still queued (or arriving) are turned away."""

    status = 503
    type = "server_error"
    code = "shutting_down"
    default_message = "torpor is shutting down; retry against another instance or later"


class NoCapacity(TorporError):
    status = 503
    type = "server_error"
    code = "no_gpus_available"
    default_message = "No GPUs available for scale-up, please retry"


class WaitTimeout(TorporError):
    status = 504
    type = "timeout_error"
    code = "worker_starting"
    default_message = "A worker is still starting, please retry shortly"


class RayUnavailable(TorporError):
    """The Ray cluster named by TORPOR_RAY_ADDRESS cannot be reached (at start)."""

    status = 503
    type = "server_error"
    code = "ray_unavailable"
    default_message = "The Ray cluster cannot be reached"


class BudgetExceeded(TorporError):
    """A request (or a scale-up) that may not fit in a key's or a deployment's budget."""

    status = 429
    type = "budget_exceeded"
    code = "budget_exceeded"
    default_message = "Budget exceeded"


class EngineRejected(TorporError):
    """An engine's 4xx that was not in the OpenAI envelope, now in it with its status."""

    type = "invalid_request_error"

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.code = "not_found" if status == 404 else f"engine_{status}"


class EngineFailed(UpstreamError):
    """An engine's 5xx that is not the caller's fault: 502 with the engine's reason."""


class ModelFetchFailed(TorporError):
    """A node could not fetch a worker's model into its cache (the worker fails with it)."""

    code = "model_fetch_failed"
    default_message = "The model could not be fetched on the worker's node"


# Raised and caught inside torpor (never an HTTP answer by themselves).


class InvalidTransition(ValueError):
    """A state change the transition table does not allow (torpor.states)."""


class ModelError(Exception):
    """The model cannot be made available; the message is shown on the deployment."""


class BuildError(Exception):
    """A function image could not be built: the message names the step and its last output."""


class WorkerUnreachable(Exception):
    """The worker failed before any byte reached the client: safe to try another."""


class PromptReady(Exception):
    """Inside the llama.cpp worker (torpor.llamacpp_worker): the chat handler reached the
    prompt's tokens, `tokens` of them, and generates nothing."""

    def __init__(self, tokens: int):
        super().__init__(tokens)
        self.tokens = tokens


class AddressNotAllowed(OSError):
    """A webhook host resolved to an address torpor may not connect to."""

    # The status class a delivery records (never the address itself).
    status_class = "address not allowed"

    def __init__(self, reason: str):
        super().__init__(f"{self.status_class} ({reason})")
        self.reason = reason


def error_body(exc: TorporError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "code": exc.code, "param": None}}


def error_response(exc: TorporError) -> Response:
    """Render any torpor error as the OpenAI envelope, so the SDK raises its typed exceptions."""
    return Response(
        orjson.dumps(error_body(exc)),
        status_code=exc.status,
        media_type="application/json",
        headers=exc.headers,
    )


def sse_error_event(exc: TorporError) -> bytes:
    """The error as an SSE event, for a stream whose 200 headers were already sent."""
    return b"data: " + orjson.dumps(error_body(exc)) + b"\n\n"
