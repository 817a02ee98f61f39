"""The OpenAI-compatible proxy: `/v1/*` and `/openai/{deployment}/v1/*`.

A plain ASGI app (no middleware stack on this path): authenticate, parse just enough of
the body to find the deployment, take a worker slot from admission (holding the request
through a cold start), then pass bytes to the worker and back, chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson

from torpor.auth import ApiKey, KeyRing
from torpor.engines.base import Engine, route_allowed
from torpor.engines.fields import normalise, request_fields_of
from torpor.engines.tokens import prompt_call, token_counter
from torpor.errors import (
    BadRequest,
    DeploymentUnavailable,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ShuttingDown,
    TorporError,
    error_body,
    sse_error_event,
)
from torpor.funcproto.routes import PREFIX as FUNCTIONS_PREFIX
from torpor.funcproto.routes import split_function_path
from torpor.gateway.dispatch import Dispatcher, UpstreamRequest
from torpor.gateway.responses_api import ChatCall, ResponsesApi
from torpor.gateway.state import ResponseStore
from torpor.gateway.videos import VideoCall, VideoJobStore, is_video_route, serve_video
from torpor.paths import check_route

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Default body limit; `torpor serve` passes the configured one in ProxyDeps.
MAX_BODY_BYTES = 32 * 1024 * 1024
_METERED_STREAMS = frozenset({"/v1/chat/completions", "/v1/completions"})
_RESPONSES_ITEM = "/v1/responses/"
# Request headers passed to the engine; everything else (auth above all) stays here.
_FORWARD = frozenset({b"content-type", b"accept", b"user-agent", b"x-session-id", b"x-request-id"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass(frozen=True)
class ProxyDeps:
    keys: KeyRing
    model_ids: Callable[[ApiKey], list[tuple[str, float]]]
    dispatcher: Dispatcher
    # X-Async: true → stored and answered 202 with this body (torpor.asyncreq).
    async_submit: Callable[[UpstreamRequest, str | None], Awaitable[dict[str, Any]]] | None = None
    # (inference routes, control routes) of a deployment's engine; None when unknown.
    routes_of: Callable[[str], tuple[frozenset[str], frozenset[str]] | None] | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    # The deployment's engine (request fields, tokenizer, native routes); None when unknown.
    engine_of: Callable[[str], Engine | None] | None = None
    # Stored Responses (torpor.gateway.state) and video jobs; None keeps Responses in this
    # process's memory and serves no video job routes.
    responses_store: ResponseStore | None = None
    video_jobs: VideoJobStore | None = None


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
    def __init__(self, deps: Callable[[], ProxyDeps], responses: ResponsesApi | None = None):
        self._deps = deps
        # `/v1/responses` for engines without it (translated to chat completions).
        self.responses = responses or ResponsesApi()
        # Set when torpor begins to stop: new requests get it (a 503 with Retry-After).
        self.stopping: TorporError | None = None
        self._handlers: set[asyncio.Future[None]] = set()
        self._aborted: set[asyncio.Future[None]] = set()

    def begin_shutdown(self) -> None:
        """Refuse new requests from now on; those in flight go on."""
        self.stopping = ShuttingDown(headers={"Retry-After": "5"})

    def abort_inflight(self) -> int:
        """The grace period is over: end every request still running with the shutdown
        error (an envelope, or an SSE error event on a stream) instead of a cut."""
        running = [h for h in self._handlers if not h.done()]
        for handler in running:
            self._aborted.add(handler)
            handler.cancel()
        return len(running)

    @property
    def inflight(self) -> int:
        return sum(1 for h in self._handlers if not h.done())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        deps = self._deps()
        out = Responder(send)
        try:
            # The key first: nobody without one makes torpor read (or buffer) a body.
            headers = dict(scope["headers"])
            key = deps.keys.authenticate(_header(headers, b"authorization"))
            if self.stopping is not None:
                raise self.stopping
            body = await read_body(receive, deps.max_body_bytes)
            if body is None:
                log.info("client hung up while sending %s %s", scope["method"], scope["path"])
                return
            handle = self._handle(deps, key, scope, headers, body, out)
            await self._run(handle, receive, scope, out)
        except TorporError as exc:
            await out.error(exc)
        except Exception:
            log.exception("request failed: %s %s", scope.get("method"), scope.get("path"))
            await out.error(TorporError())

    async def _run(
        self, work: Awaitable[None], receive: Receive, scope: Scope, out: Responder
    ) -> None:
        """Run the handler until it ends or the client hangs up (which cancels it, and so
        aborts the upstream request at once)."""
        handler = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        self._handlers.add(handler)
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not handler.done():
                handler.cancel()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handler
            self._handlers.discard(handler)
        if handler in self._aborted:
            self._aborted.discard(handler)
            log.info("ended %s %s: shutdown grace over", scope["method"], scope["path"])
            await out.error(ShuttingDown(headers={"Retry-After": "5"}))
            return
        if handler.cancelled():
            log.info("client hung up: %s %s", scope["method"], scope["path"])
            return
        handler.result()

    async def _handle(
        self,
        deps: ProxyDeps,
        key: ApiKey,
        scope: Scope,
        headers: dict[bytes, bytes],
        body: bytes,
        out: Responder,
    ) -> None:
        arrived = time.monotonic()
        deployment, path = _split_path(scope["path"])
        method = scope["method"]
        if path == "/v1/models" and method == "GET":
            await _send_models(deps, key, deployment, out)
            return
        if path.startswith("/v1/models/") and method == "GET":
            await _send_model(deps, key, deployment, path[len("/v1/models/") :], out)
            return
        if path.startswith(_RESPONSES_ITEM) and method in ("GET", "DELETE"):
            responses = self._responses_api(deps)
            response_id = path[len(_RESPONSES_ITEM) :]
            stored = await responses.store.get(key, response_id)
            if stored is not None or deployment is None:
                # Kept by torpor (translated); without a deployment, nothing else has it.
                if method == "GET":
                    await responses.retrieve(stored, response_id, out)
                else:
                    await responses.delete(key, response_id, out)
                return
        if deps.video_jobs is not None and is_video_route(path):
            call = VideoCall(
                key=key,
                deployment=deployment,
                method=method,
                route=path,
                query=scope.get("query_string", b"").decode("latin-1"),
                headers={k.decode(): v.decode() for k, v in scope["headers"] if k in _FORWARD},
                body=body,
                session_id=_header(headers, b"x-session-id"),
                arrived=arrived,
            )
            await serve_video(deps, deps.video_jobs, call, out)
            return
        payload = _parse_json(body) if body else None
        if deployment is None:
            deployment = _model_of(payload, scope)
        if not key.may_use(deployment):
            raise Forbidden(f"This API key may not use deployment {deployment!r}")
        deps.dispatcher.gate(deployment)  # unknown deployment: 404 before anything else
        routes = deps.routes_of(deployment) if deps.routes_of is not None else None
        engine = deps.engine_of(deployment) if deps.engine_of is not None else None
        native = routes is not None and route_allowed(path, routes[0])
        if path == "/v1/responses" and method == "POST" and payload is not None and not native:
            # Served by translation: the key needs what the chat call needs.
            if routes is not None:
                check_route(key, deployment, "/v1/chat/completions", *routes)
            await self._responses(deps, key, deployment, engine, payload, headers, arrived, out)
            return
        if routes is not None:
            check_route(key, deployment, path, *routes)
        stream = bool(payload and payload.get("stream") is True)
        strip_usage = want_usage = False
        if payload is not None:
            rewrite = payload.get("model") != deployment
            if engine is not None:
                rewrite |= normalise(payload, path, request_fields_of(engine))
            # Workers serve under the deployment's name; the per-deployment base URL lets
            # clients send any model string (or none).
            payload["model"] = deployment
            if stream and path in _METERED_STREAMS:
                # Ask the engine for the usage chunk so streams are metered exactly; it is
                # taken out again when the client did not ask for it.
                options = payload.get("stream_options")
                options = options if isinstance(options, dict) else {}
                want_usage = options.get("include_usage") is True
                if not want_usage:
                    payload["stream_options"] = {**options, "include_usage": True}
                    strip_usage = rewrite = True
            if rewrite:
                body = orjson.dumps(payload)
        fwd = {k.decode(): v.decode() for k, v in scope["headers"] if k in _FORWARD}
        if payload is not None:
            fwd["content-type"] = "application/json"
        # Route decisions (metered streams, token counts) look at the path without its
        # query string; the engine gets both.
        route = path
        query = scope.get("query_string", b"")
        if query:
            path = f"{path}?{query.decode()}"
        request = UpstreamRequest(
            key=key,
            deployment=deployment,
            method=method,
            path=path,
            body=body,
            headers=fwd,
            stream=stream,
            session_id=_header(headers, b"x-session-id"),
            arrived=arrived,
            strip_usage_chunk=strip_usage,
            want_usage_chunk=want_usage,
            max_tokens=_max_tokens(payload),
            count_tokens=(
                token_counter(engine, deployment, route, payload)
                if stream and payload is not None and route in _METERED_STREAMS
                else None
            ),
            payload=payload,
            count_prompt=(
                functools.partial(prompt_call, engine, deployment, route)
                if engine is not None and route in _METERED_STREAMS
                else None
            ),
        )
        if deps.async_submit is not None and (_header(headers, b"x-async") or "").lower() in _TRUE:
            if deps.dispatcher.meter is not None:
                # Over budget: refused at submit, not after a 202.
                deps.dispatcher.meter.check(key, deployment)
            accepted = await deps.async_submit(request, _header(headers, b"x-webhook-url"))
            await out.full(202, [(b"content-type", b"application/json")], orjson.dumps(accepted))
            return
        await deps.dispatcher.dispatch(request, out)

    async def _responses(
        self,
        deps: ProxyDeps,
        key: ApiKey,
        deployment: str,
        engine: Engine | None,
        payload: dict[str, Any],
        headers: dict[bytes, bytes],
        arrived: float,
        out: Responder,
    ) -> None:
        fields = request_fields_of(engine)
        route = "/v1/chat/completions"
        call = ChatCall(
            key=key,
            deployment=deployment,
            headers={k.decode(): v.decode() for k, v in headers.items() if k in _FORWARD},
            session_id=_header(headers, b"x-session-id"),
            arrived=arrived,
            prepare=lambda chat: normalise(chat, route, fields),
            counter=lambda chat: token_counter(engine, deployment, route, chat),
            count_prompt=(
                functools.partial(prompt_call, engine, deployment, route) if engine else None
            ),
        )
        if deps.dispatcher.meter is not None:
            deps.dispatcher.meter.check(key, deployment)
        await self._responses_api(deps).create(deps.dispatcher, call, payload, out)

    def _responses_api(self, deps: ProxyDeps) -> ResponsesApi:
        if deps.responses_store is None:
            return self.responses
        return ResponsesApi(deps.responses_store)


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


async def _send_model(
    deps: ProxyDeps, key: ApiKey, deployment: str | None, model: str, out: Responder
) -> None:
    """`GET /v1/models/{id}`: the model object, scoped like the list."""
    found = [m for m in deps.model_ids(key) if m[0] == model]
    if not found or (deployment is not None and model != deployment):
        raise NotFound(f"The model {model!r} does not exist or this key may not use it")
    name, created = found[0]
    data = {"id": name, "object": "model", "created": int(created), "owned_by": "torpor"}
    await out.full(200, [(b"content-type", b"application/json")], orjson.dumps(data))


async def read_body(receive: Receive, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The whole request body, or None when the client hung up while sending it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body larger than {limit} bytes")
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
    if path.startswith(FUNCTIONS_PREFIX):  # /functions/{app}/{name}[/{method}]
        return _function_target(path)
    if path.startswith("/openai/"):
        name, sep, rest = path[len("/openai/") :].partition("/")
        if not name or not sep or not (rest == "v1" or rest.startswith("v1/")):
            raise NotFound(f"Unknown route {path}; expected /openai/<deployment>/v1/...")
        return name, "/" + rest
    return None, path


def _function_target(path: str) -> tuple[str, str]:
    """A function call: its deployment and the function server's path (torpor.functions)."""
    target = split_function_path(path)
    if target is None:
        raise NotFound(f"Unknown route {path}; expected /functions/<app>/<name>[/<method>]")
    return target


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Malformed JSON in request body: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("Request body must be a JSON object")
    return payload


def _max_tokens(payload: dict[str, Any] | None) -> int | None:
    if payload is None:
        return None
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return None


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
