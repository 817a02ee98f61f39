"""What each client call sends and how its answer is read: one definition shared by the
sync `Client` and the `AsyncClient`, which only differ in how they carry it out."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from torpor.funcproto.pickling import JSON_CODEC, Codec
from torpor.funcproto.routes import function_path
from torpor.sdk.errors import APIConnectionError, DeploymentFailedError, TorporError, error_for
from torpor.sdk.models import (
    ApiKey,
    AsyncRequest,
    CreatedKey,
    Deployment,
    DeploymentPatch,
    DeploymentSpec,
    Event,
    Gpu,
    GpuNode,
    ImageInfo,
    UsageSummary,
)

T = TypeVar("T")
JSON = dict[str, Any]

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(30, connect=5)
# A followed log stream or an image build may stay quiet for long: no read timeout.
STREAM_TIMEOUT = httpx.Timeout(30, connect=5, read=None)
# A function call runs as long as the function does (the server's request timeout rules).
CALL_TIMEOUT = httpx.Timeout(None, connect=5)


def resolve_url(url: str | None) -> str:
    return (url or os.environ.get("TORPOR_URL") or DEFAULT_URL).rstrip("/")


def local_admin_key() -> str | None:
    """The bootstrap admin key of a server on this machine (TORPOR_ADMIN_KEY, else
    <data_dir>/admin.key), when one can be found."""
    try:
        from torpor.settings import Settings

        settings = Settings()
    except Exception:
        return None
    if settings.admin_key:
        return settings.admin_key
    try:
        return (Path(settings.data_dir) / "admin.key").read_text().strip() or None
    except OSError:
        return None


def resolve_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get("TORPOR_API_KEY") or local_admin_key()


def seg(value: str) -> str:
    """Quote one path segment."""
    return quote(str(value), safe="")


@dataclass(frozen=True)
class Op(Generic[T]):
    """One HTTP call and the reading of its JSON answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: httpx.Timeout = field(default_factory=lambda: DEFAULT_TIMEOUT)


def http_options(url: str, api_key: str | None, max_parallel: int) -> JSON:
    """The keyword arguments of the httpx client (sync or async) behind a torpor client."""
    return {
        "base_url": url,
        "headers": {"Authorization": f"Bearer {api_key}"} if api_key else {},
        "timeout": DEFAULT_TIMEOUT,
        "limits": httpx.Limits(max_connections=max(max_parallel, 10)),
    }


def request_args(op: Op[Any]) -> JSON:
    """The keyword arguments of `httpx.(Async)Client.request` for `op`, past method and path."""
    return {"json": op.json, "params": op.params, "headers": op.headers, "timeout": op.timeout}


def answer(op: Op[T], response: httpx.Response) -> T:
    """The parsed answer of `op`, or its typed error for a status >= 400."""
    if response.status_code >= 400:
        raise failure(response)
    return op.parse(decode(response, op.path))


def transport_error(url: str, exc: httpx.TransportError) -> TorporError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return APIConnectionError(
            f"cannot reach torpor at {url}: is `torpor serve` running?", code="connection_error"
        )
    if isinstance(exc, httpx.TimeoutException):
        return APIConnectionError(f"timed out talking to torpor at {url}", code="timeout")
    return APIConnectionError(f"error talking to torpor at {url}: {exc}", code="connection_error")


def failure(response: httpx.Response) -> TorporError:
    """The typed error for a response with status >= 400 (its body already read)."""
    status = response.status_code
    text = response.text.strip()
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    fallback = text[:1000] or f"HTTP {status} {response.reason_phrase}".strip()
    return error_for(status, body, fallback)


def decode(response: httpx.Response, path: str) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise TorporError(
            f"unexpected non-JSON response from {path}",
            status=response.status_code,
            code="bad_response",
        ) from exc


def _obj(data: Any) -> JSON:
    if not isinstance(data, dict):
        raise TorporError("unexpected response from torpor", code="bad_response")
    return data


def _items(data: Any) -> list[JSON]:
    items = _obj(data).get("data")
    if not isinstance(items, list):
        raise TorporError("unexpected response from torpor", code="bad_response")
    return [item for item in items if isinstance(item, dict)]


def _deployment(data: Any) -> Deployment:
    return Deployment.model_validate(_obj(data))


def _deployments(data: Any) -> list[Deployment]:
    return [Deployment.model_validate(d) for d in _items(data)]


def _ignore(data: Any) -> None:
    return None


def _dict(data: Any) -> JSON:
    return _obj(data)


# -- deployments ------------------------------------------------------------------------------


def spec_json(spec: DeploymentSpec | Mapping[str, Any]) -> JSON:
    if isinstance(spec, DeploymentSpec):
        return spec.model_dump(mode="json")
    return dict(spec)


def patch_json(changes: DeploymentPatch | Mapping[str, Any]) -> JSON:
    if isinstance(changes, DeploymentPatch):
        return changes.model_dump(mode="json", exclude_unset=True)
    return dict(changes)


def create_deployment(spec: DeploymentSpec | Mapping[str, Any]) -> Op[Deployment]:
    return Op("POST", "/api/deployments", _deployment, json=spec_json(spec))


def list_deployments() -> Op[list[Deployment]]:
    return Op("GET", "/api/deployments", _deployments)


def get_deployment(name: str) -> Op[Deployment]:
    return Op("GET", f"/api/deployments/{seg(name)}", _deployment)


def update_deployment(name: str, changes: DeploymentPatch | Mapping[str, Any]) -> Op[Deployment]:
    return Op("PATCH", f"/api/deployments/{seg(name)}", _deployment, json=patch_json(changes))


def delete_deployment(name: str) -> Op[None]:
    return Op("DELETE", f"/api/deployments/{seg(name)}", _ignore)


def events(name: str) -> Op[list[Event]]:
    return Op(
        "GET",
        f"/api/deployments/{seg(name)}/events",
        lambda d: [Event.model_validate(e) for e in _items(d)],
    )


def logs_request(name: str, worker: str | None, tail: int, follow: bool) -> tuple[str, JSON]:
    params: JSON = {"tail": str(tail)}
    if worker:
        params["worker"] = worker
    if follow:
        params["follow"] = "1"
    return f"/api/deployments/{seg(name)}/logs", params


def readiness(dep: Deployment) -> bool | None:
    """True when the deployment can serve (workers may still be at zero), None while its
    setup runs; raises DeploymentFailedError when it failed."""
    if dep.state == "failed" or (dep.state is None and dep.status == "error"):
        raise DeploymentFailedError(
            dep.reason or f"deployment {dep.name} failed", code="deployment_failed"
        )
    if dep.state is not None:
        return True if dep.state == "running" else None
    return True if dep.status not in ("starting", "pending", "") else None


# -- keys, usage, gpus ------------------------------------------------------------------------


def create_key(
    name: str,
    deployments: Sequence[str] | None,
    admin: bool,
    budget_usd_monthly: float | None,
    budget_tokens_monthly: int | None,
    plan_tokens: int | None,
) -> Op[CreatedKey]:
    body: JSON = {
        "name": name,
        "deployments": list(deployments) if deployments is not None else None,
        "admin": admin,
    }
    for k, v in (
        ("budget_usd_monthly", budget_usd_monthly),
        ("budget_tokens_monthly", budget_tokens_monthly),
        ("plan_tokens", plan_tokens),
    ):
        if v is not None:
            body[k] = v
    return Op("POST", "/api/keys", lambda d: CreatedKey.model_validate(_obj(d)), json=body)


def list_keys() -> Op[list[ApiKey]]:
    return Op("GET", "/api/keys", lambda d: [ApiKey.model_validate(k) for k in _items(d)])


def revoke_key(key_id: str) -> Op[None]:
    return Op("DELETE", f"/api/keys/{seg(key_id)}", _ignore)


def usage_summary(window: str, deployment: str | None) -> Op[UsageSummary]:
    params = {"window": window}
    if deployment:
        params["deployment"] = deployment
    return Op(
        "GET",
        "/api/usage/summary",
        lambda d: UsageSummary.model_validate(_obj(d)),
        params=params,
    )


def usage_by_deployment(window: str) -> Op[list[UsageSummary]]:
    return Op(
        "GET",
        "/api/usage/by-deployment",
        lambda d: [UsageSummary.model_validate(r) for r in _items(d)],
        params={"window": window},
    )


def invoices(month: str | None) -> Op[JSON]:
    return Op("GET", "/api/invoices", _dict, params={"month": month} if month else None)


def gpus() -> Op[list[Gpu]]:
    return Op("GET", "/api/gpus", lambda d: [Gpu.model_validate(g) for g in _items(d)])


def gpu_nodes() -> Op[list[GpuNode]]:
    return Op(
        "GET",
        "/api/gpus",
        lambda d: [GpuNode.model_validate(n) for n in _obj(d).get("nodes") or []],
    )


# -- async requests ---------------------------------------------------------------------------


def _async_request(data: Any) -> AsyncRequest:
    return AsyncRequest.model_validate(_obj(data))


def submit(deployment: str, path: str, body: Mapping[str, Any]) -> Op[AsyncRequest]:
    route = path.lstrip("/")
    return Op(
        "POST", f"/deployment/{seg(deployment)}/{route}", _async_request, json={"input": body}
    )


def get_request(request_id: str) -> Op[AsyncRequest]:
    return Op("GET", f"/v1/requests/{seg(request_id)}", _async_request)


def cancel_request(request_id: str) -> Op[AsyncRequest]:
    return Op("DELETE", f"/v1/requests/{seg(request_id)}", _async_request)


def poll_delay(attempt: int) -> float:
    """Seconds between polls of an async request: quick at first, at most one second."""
    return float(min(1.0, 0.05 * 1.5**attempt))


# -- functions --------------------------------------------------------------------------------


def call_function(
    app: str,
    name: str,
    method: str | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    codec: Codec = JSON_CODEC,
) -> Op[Any]:
    return Op(
        "POST",
        function_path(app, name, method),
        codec.result,
        json=codec.body(args, kwargs),
        timeout=CALL_TIMEOUT,
    )


def spawn_function(
    app: str,
    name: str,
    method: str | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    codec: Codec = JSON_CODEC,
) -> Op[AsyncRequest]:
    return Op(
        "POST",
        function_path(app, name, method),
        _async_request,
        json=codec.body(args, kwargs),
        headers={"X-Async": "true"},
    )


def function_result(req: AsyncRequest, codec: Codec = JSON_CODEC) -> Any:
    """The return value of a finished spawned call; raises its typed error when it failed."""
    if req.status == "completed":
        return codec.result(req.response)
    error = req.error or {"message": f"call {req.status}"}
    status = req.status_code or (409 if req.status == "cancelled" else 500)
    raise error_for(status, {"error": error}, str(error.get("message") or req.status))


def build_image(
    definition: Mapping[str, Any], contents: Mapping[str, str] | None = None
) -> tuple[str, JSON]:
    body = dict(definition)
    if contents:
        body["contents"] = dict(contents)
    return "/api/images", body


def image_event(line: str, on_log: Callable[[str], None] | None) -> ImageInfo | None:
    """Read one NDJSON line of an image build: a log line (to `on_log`), the result, or the
    build's error (raised)."""
    import json

    if not line.strip():
        return None
    event = json.loads(line)
    kind = event.get("event")
    if kind == "log":
        if on_log is not None:
            on_log(str(event.get("line", "")))
    elif kind == "error":
        raise TorporError(str(event.get("message")), status=500, code="image_build_failed")
    elif kind == "done":
        return ImageInfo.model_validate(event["image"])
    return None


NO_IMAGE = "image build ended without a result"
