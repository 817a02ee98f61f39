"""The OpenAI-compatible proxy: `/v1/*` and `/openai/{deployment}/v1/*`.

A plain ASGI app (no middleware stack on this path): authenticate, parse just enough of
the body to find the deployment, take a worker slot from admission (holding the request
through a cold start), then pass bytes to the worker and back, chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import orjson

from torpor.admission import DeploymentGate, Lease
from torpor.auth import ApiKey, KeyRing
from torpor.errors import (
    BadRequest,
    DeploymentUnavailable,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    TorporError,
    UpstreamError,
    error_body,
    sse_error_event,
)

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 32 * 1024 * 1024
# A request whose worker died before answering is tried on another worker this many times.
MAX_RETRIES = 2
# Request headers passed to the engine; everything else (auth above all) stays here.
_FORWARD = frozenset({b"content-type", b"accept", b"user-agent", b"x-session-id", b"x-request-id"})
_RELAY = frozenset({"content-type", "content-encoding", "x-request-id"})
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class _WorkerUnreachable(Exception):
    """The worker failed before any byte reached the client: safe to try another."""


@dataclass(frozen=True)
class ProxyDeps:
    keys: KeyRing
    gate_for: Callable[[str], DeploymentGate | None]
    model_ids: Callable[[ApiKey], list[tuple[str, float]]]
    http: Callable[[], aiohttp.ClientSession]
    on_worker_broken: Callable[[str], None]
    keepalive_interval_s: float
    request_timeout_s: float
    connect_timeout_s: float


class Responder:
    """Tracks whether the response has started, so errors go out in the right form."""

    def __init__(self, send: Send):
        self._send = send
        self.started = False
        self.sse = False
        self.status = 0

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started, self.status = True, status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, more: bool = True) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def full(self, status: int, headers: list[tuple[bytes, bytes]], data: bytes) -> None:
        headers = [*headers, (b"content-length", str(len(data)).encode())]
        await self.start(status, headers)
        await self.body(data, more=False)

    async def start_sse(self, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        self.sse = True
        await self.start(200, _SSE_HEADERS + (extra or []))

    async def error(self, exc: TorporError) -> None:
        if not self.started:
            headers = [(b"content-type", b"application/json")]
            headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
            await self.full(exc.status, headers, orjson.dumps(error_body(exc)))
        elif self.sse:
            await self.body(sse_error_event(exc), more=False)
        else:
            await self.body(b"", more=False)


class Proxy:
    def __init__(self, deps: Callable[[], ProxyDeps]):
        self._deps = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        deps = self._deps()
        out = Responder(send)
        try:
            body = await _read_body(receive)
            handler = asyncio.ensure_future(self._handle(deps, scope, body, out))
            watcher = asyncio.ensure_future(_wait_disconnect(receive))
            try:
                await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not handler.done():
                    # The client hung up: cancelling aborts the upstream request at once.
                    handler.cancel()
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handler
            handler.result()
        except TorporError as exc:
            await out.error(exc)
        except Exception:
            log.exception("request failed: %s %s", scope.get("method"), scope.get("path"))
            await out.error(TorporError())

    async def _handle(self, deps: ProxyDeps, scope: Scope, body: bytes, out: Responder) -> None:
        headers = dict(scope["headers"])
        key = deps.keys.authenticate(_header(headers, b"authorization"))
        deployment, path = _split_path(scope["path"])
        method = scope["method"]
        if path == "/v1/models" and method == "GET":
            await _send_models(deps, key, deployment, out)
            return
        payload = _parse_json(body) if body else None
        if deployment is None:
            deployment = _model_of(payload, scope)
        if not key.may_use(deployment):
            raise Forbidden(f"This API key may not use deployment {deployment!r}")
        gate = deps.gate_for(deployment)
        if gate is None:
            raise DeploymentUnavailable(
                f"Deployment not found or not running: no deployment named {deployment!r}"
            )
        if payload is not None and payload.get("model") != deployment:
            # Workers serve under the deployment's name; the per-deployment base URL lets
            # clients send any model string (or none).
            payload["model"] = deployment
            body = orjson.dumps(payload)
        stream = bool(payload and payload.get("stream") is True)
        session_id = _header(headers, b"x-session-id")
        fwd = {k.decode(): v.decode() for k, v in scope["headers"] if k in _FORWARD}
        if payload is not None:
            fwd["content-type"] = "application/json"
        query = scope.get("query_string", b"")
        if query:
            path = f"{path}?{query.decode()}"
        call = _Upstream(deps, method, path, body, fwd, stream)

        deadline = time.monotonic() + gate.wait_time_s
        for attempt in range(MAX_RETRIES + 1):
            lease = await _acquire(deps, gate, session_id, stream, deadline, out)
            if lease is None:
                return  # the error already went out as an SSE event
            try:
                await call.run(lease, out)
                return
            except _WorkerUnreachable:
                log.warning("worker %s unreachable (attempt %d)", lease.worker_id, attempt + 1)
                gate.report_broken(lease.worker_id)
                deps.on_worker_broken(deployment)
            finally:
                lease.release()
        raise UpstreamError()


class _Upstream:
    """One request to a worker, retried on another worker by the caller when it could not
    reach this one."""

    def __init__(
        self,
        deps: ProxyDeps,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        stream: bool,
    ):
        self.deps, self.method, self.path = deps, method, path
        self.body, self.headers, self.stream = body, headers, stream
        if stream:
            # Between chunks, not in total: a long generation may stream for minutes.
            self.timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=deps.connect_timeout_s, sock_read=deps.request_timeout_s
            )
        else:
            self.timeout = aiohttp.ClientTimeout(
                total=deps.request_timeout_s, sock_connect=deps.connect_timeout_s
            )

    async def run(self, lease: Lease, out: Responder) -> None:
        url = lease.route.url + self.path
        worker = (b"x-torpor-worker", lease.worker_id.encode())
        try:
            resp = await self.deps.http().request(
                self.method,
                url,
                data=self.body or None,
                headers=self.headers,
                timeout=self.timeout,
            )
        except (aiohttp.ClientConnectionError, aiohttp.ClientOSError) as exc:
            raise _WorkerUnreachable(str(exc)) from exc
        except TimeoutError as exc:
            raise _WorkerUnreachable("connect timeout") from exc
        complete = False
        try:
            if self.stream and resp.status == 200:
                if not out.started:
                    await out.start_sse([worker])
                try:
                    async for chunk in resp.content.iter_any():
                        await out.body(chunk)
                except TimeoutError:
                    await out.error(RequestTimeout())
                    return
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                    await out.error(UpstreamError())
                    return
                await out.body(b"", more=False)
            else:
                try:
                    data = await resp.read()
                except TimeoutError:
                    raise RequestTimeout() from None
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                    if out.started:
                        raise UpstreamError() from exc
                    raise _WorkerUnreachable(str(exc)) from exc
                await self._relay(resp, data, worker, out)
            complete = True
        finally:
            if complete:
                resp.release()
            else:
                # Dropping the connection is how the engine learns the client is gone.
                resp.close()

    async def _relay(
        self,
        resp: aiohttp.ClientResponse,
        data: bytes,
        worker: tuple[bytes, bytes],
        out: Responder,
    ) -> None:
        if resp.status >= 500:
            log.warning("worker answered %d: %s", resp.status, data[:500])
            raise UpstreamError()
        if out.started:
            # Held through a cold start as SSE: an engine error becomes an error event.
            if resp.status >= 400:
                await out.body(b"data: " + data + b"\n\n", more=False)
            else:
                await out.body(data, more=False)
            return
        headers = [
            (k.lower().encode(), v.encode()) for k, v in resp.headers.items() if k.lower() in _RELAY
        ]
        await out.full(resp.status, [*headers, worker], data)


async def _acquire(
    deps: ProxyDeps,
    gate: DeploymentGate,
    session_id: str | None,
    stream: bool,
    deadline: float,
    out: Responder,
) -> Lease | None:
    """A slot on a worker, waiting through a cold start when needed."""
    lease = gate.try_acquire(session_id)
    if lease is not None:
        return lease
    waiter = gate.enqueue(session_id)
    try:
        if not stream:
            lease = await gate.wait(waiter, deadline - time.monotonic())
            if lease is None:
                raise gate.timeout_error()
            return lease
        # A held stream answers at once with SSE comments, so clients and proxies see a
        # live connection while the worker boots.
        if not out.started:
            await out.start_sse()
        await out.body(b": waiting for a worker\n\n")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise gate.timeout_error()
            lease = await gate.wait(waiter, min(remaining, deps.keepalive_interval_s))
            if lease is not None:
                return lease
            await out.body(b": keep-alive\n\n")
    except TorporError as exc:
        gate.abandon(waiter)
        if out.started:
            await out.error(exc)
            return None
        raise
    except BaseException:
        gate.abandon(waiter)
        raise


async def _send_models(
    deps: ProxyDeps, key: ApiKey, deployment: str | None, out: Responder
) -> None:
    models = deps.model_ids(key)
    if deployment is not None:
        models = [m for m in models if m[0] == deployment]
        if not models:
            raise DeploymentUnavailable()
    data = [
        {"id": name, "object": "model", "created": int(created), "owned_by": "torpor"}
        for name, created in models
    ]
    body = orjson.dumps({"object": "list", "data": data})
    await out.full(200, [(b"content-type", b"application/json")], body)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"Request body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


def _split_path(path: str) -> tuple[str | None, str]:
    """(deployment from the path or None, the engine path starting with /v1)."""
    if path.startswith("/openai/"):
        name, sep, rest = path[len("/openai/") :].partition("/")
        if not name or not sep or not (rest == "v1" or rest.startswith("v1/")):
            raise NotFound(f"Unknown route {path}; expected /openai/<deployment>/v1/...")
        return name, "/" + rest
    return None, path


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Malformed JSON in request body: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("Request body must be a JSON object")
    return payload


def _model_of(payload: dict[str, Any] | None, scope: Scope) -> str:
    model = payload.get("model") if payload is not None else None
    if model is None:
        query = parse_qs(scope.get("query_string", b"").decode())
        model = query.get("model", [None])[0]
    if not isinstance(model, str) or not model:
        raise BadRequest(
            "'model' is required: name a deployment, or use the base URL /openai/<deployment>/v1"
        )
    return model
