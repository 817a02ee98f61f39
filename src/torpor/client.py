"""A small synchronous client for torpor's management REST API (used by the CLI)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

JSON = dict[str, Any]

DEFAULT_TIMEOUT = httpx.Timeout(30, connect=5)
# A followed log stream may stay quiet for a long time: never time out between chunks.
FOLLOW_TIMEOUT = httpx.Timeout(30, connect=5, read=None)


class ApiError(Exception):
    """A failed API call: the HTTP status (0 when no response came), a message and a code."""

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    def __repr__(self) -> str:
        return f"ApiError(status={self.status!r}, message={self.message!r}, code={self.code!r})"


def _error_from(response: httpx.Response) -> ApiError:
    """Build an ApiError from a response, reading the error envelope when there is one."""
    status = response.status_code
    text = response.text.strip()
    message = text[:1000] or f"HTTP {status} {response.reason_phrase}".strip()
    code = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            code = str(error.get("code") or "")
        elif isinstance(error, str):
            message = error
        elif "detail" in body:  # a framework default error, not the torpor envelope
            message = str(body["detail"])
    return ApiError(status, message, code)


def _seg(value: str) -> str:
    """Quote one path segment."""
    return quote(str(value), safe="")


class TorporClient:
    """Methods mirror the REST routes and return parsed JSON; failures raise ApiError."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=DEFAULT_TIMEOUT, transport=transport
        )

    # -- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TorporClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _transport_errors(self) -> Iterator[None]:
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ApiError(
                0,
                f"cannot reach torpor at {self.url}: is `torpor serve` running?",
                "connection_error",
            ) from exc
        except httpx.TimeoutException as exc:
            raise ApiError(0, f"timed out talking to torpor at {self.url}", "timeout") from exc
        except httpx.TransportError as exc:
            raise ApiError(
                0, f"error talking to torpor at {self.url}: {exc}", "connection_error"
            ) from exc

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        with self._transport_errors():
            response = self._http.request(method, path, json=json, params=params)
        if response.status_code >= 400:
            raise _error_from(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(
                response.status_code, f"unexpected non-JSON response from {path}", "bad_response"
            ) from exc

    def _object(self, method: str, path: str, *, json: Any = None) -> JSON:
        result = self._request(method, path, json=json)
        if not isinstance(result, dict):
            raise ApiError(0, f"unexpected response from {path}", "bad_response")
        return result

    def _list(self, path: str) -> list[JSON]:
        data = self._object("GET", path).get("data")
        if not isinstance(data, list):
            raise ApiError(0, f"unexpected response from {path}", "bad_response")
        return [item for item in data if isinstance(item, dict)]

    # -- deployments ----------------------------------------------------------------------

    def create_deployment(self, spec: JSON) -> JSON:
        return self._object("POST", "/api/deployments", json=spec)

    def list_deployments(self) -> list[JSON]:
        return self._list("/api/deployments")

    def get_deployment(self, name: str) -> JSON:
        return self._object("GET", f"/api/deployments/{_seg(name)}")

    def update_deployment(self, name: str, changes: JSON) -> JSON:
        return self._object("PATCH", f"/api/deployments/{_seg(name)}", json=changes)

    def delete_deployment(self, name: str) -> JSON:
        return self._object("DELETE", f"/api/deployments/{_seg(name)}")

    def events(self, name: str) -> list[JSON]:
        return self._list(f"/api/deployments/{_seg(name)}/events")

    def logs(
        self, name: str, worker: str | None = None, tail: int = 200, follow: bool = False
    ) -> Iterator[str]:
        """Yield log lines ("[worker-id] text"); with follow=True this runs until closed."""
        params = {"tail": str(tail)}
        if worker:
            params["worker"] = worker
        if follow:
            params["follow"] = "1"
        path = f"/api/deployments/{_seg(name)}/logs"
        timeout = FOLLOW_TIMEOUT if follow else DEFAULT_TIMEOUT
        with (
            self._transport_errors(),
            self._http.stream("GET", path, params=params, timeout=timeout) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise _error_from(response)
            yield from response.iter_lines()

    # -- API keys -------------------------------------------------------------------------

    def create_key(
        self, name: str, deployments: list[str] | None = None, admin: bool = False
    ) -> JSON:
        body = {"name": name, "deployments": deployments, "admin": admin}
        return self._object("POST", "/api/keys", json=body)

    def list_keys(self) -> list[JSON]:
        return self._list("/api/keys")

    def usage_summary(self, window: str, deployment: str | None = None) -> JSON:
        params = {"window": window}
        if deployment:
            params["deployment"] = deployment
        result = self._request("GET", "/api/usage/summary", params=params)
        return dict(result or {})

    def usage_by_deployment(self, window: str) -> list[JSON]:
        result = self._request("GET", "/api/usage/by-deployment", params={"window": window})
        return list((result or {}).get("data", []))

    def revoke_key(self, key_id: str) -> JSON:
        return self._object("DELETE", f"/api/keys/{_seg(key_id)}")
