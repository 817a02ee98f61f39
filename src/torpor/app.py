"""The app factory: FastAPI for the control API, the plain-ASGI proxy for inference."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.responses import Response

from torpor import __version__
from torpor.api import (
    async_requests,
    conversations,
    deployments,
    frameworks,
    gpus,
    images,
    keys,
    usage,
)
from torpor.console import mount_console
from torpor.errors import (
    InvalidSpec,
    NotFound,
    PayloadTooLarge,
    TorporError,
    error_body,
    error_response,
)
from torpor.gateway.proxy import Message, Proxy, Receive, Scope, Send, read_body
from torpor.paths import check_path
from torpor.services import Services
from torpor.settings import Settings
from torpor.validation import format_errors

log = logging.getLogger(__name__)

_PROXY_PREFIXES = ("/v1/", "/openai/", "/functions/")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Under /v1 but served by FastAPI: async request status and cancel.
_API_UNDER_V1 = ("/v1/requests/",)


class TorporApp:
    """Top-level ASGI: one path check for everything, then inference paths go straight to
    the proxy, the rest to FastAPI (bodies authenticated and bounded first)."""

    def __init__(self, api: FastAPI, proxy: Proxy, services: Services):
        self.api = api
        self.proxy = proxy
        self.services = services

    def begin_shutdown(self) -> None:
        """SIGTERM: refuse new inference requests and answer the queued ones 503 now."""
        self.proxy.begin_shutdown()
        self.services.begin_shutdown()

    def abort_inflight(self) -> int:
        """The grace period is over: end the requests still running with an error."""
        return self.proxy.abort_inflight()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        path = scope.get("path", "")
        try:
            check_path(path, scope.get("raw_path"))
        except TorporError as exc:
            await _send_error(send, exc)
            return
        if path.startswith(_PROXY_PREFIXES) and not path.startswith(_API_UNDER_V1):
            await self.proxy(scope, receive, send)
        elif scope.get("method") in _BODY_METHODS:
            await self._api_with_body(scope, receive, send)
        else:
            await self.api(scope, receive, send)

    async def _api_with_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every control route that reads a body needs a key: check it before reading a
        byte, then read at most the route's limit and hand FastAPI the buffered body."""
        s = self.services.settings
        limit = (
            s.max_async_body_bytes
            if scope.get("path", "").startswith("/deployment/")
            else s.max_api_body_bytes
        )
        headers = dict(scope["headers"])
        try:
            auth = headers.get(b"authorization")
            self.services.keys.authenticate(auth.decode("latin-1") if auth else None)
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise PayloadTooLarge(f"Request body larger than {limit} bytes")
            body = await read_body(receive, limit)
        except TorporError as exc:
            await _send_error(send, exc)
            return
        if body is None:
            return  # the client hung up while sending
        await self.api(scope, _replay(body, receive), send)


async def _send_error(send: Send, exc: TorporError) -> None:
    data = orjson.dumps(error_body(exc))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields the buffered body once, then waits on the real one (for the
    disconnect that streaming responses listen for)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def create_app(settings: Settings) -> TorporApp:
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await services.start()
        if services.generated_admin_key:
            path = settings.data_dir / "admin.key"
            print(
                f"\ntorpor: generated admin API key (shown once, saved 0600 to {path}):\n"
                f"  {services.generated_admin_key}\n",
                flush=True,
            )
        try:
            yield
        finally:
            await services.stop()

    # /docs and /openapi.json are served below, behind a key.
    api = FastAPI(
        title="torpor",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    api.state.services = services
    api.include_router(deployments.router)
    api.include_router(keys.router)
    api.include_router(gpus.router)
    api.include_router(conversations.router)
    api.include_router(async_requests.router)
    api.include_router(usage.router)
    api.include_router(images.router)
    api.include_router(frameworks.router)

    @api.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @api.get("/metrics", tags=["health"])
    async def metrics(request: Request) -> Response:
        # Prometheus text format. It names every deployment with its traffic and cost, so
        # it needs an admin key (Prometheus sends it as a bearer token) unless the operator
        # opens it with TORPOR_PUBLIC_METRICS=1.
        if not settings.public_metrics:
            services.keys.authenticate(request.headers.get("authorization")).require_admin()
        return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> Response:
        services.keys.authenticate(request.headers.get("authorization"))
        return Response(orjson.dumps(api.openapi()), media_type="application/json")

    @api.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        # The page itself needs a key; it then loads the schema with the same one.
        services.keys.authenticate(request.headers.get("authorization"))
        return get_swagger_ui_html(openapi_url="/openapi.json", title="torpor API")

    @api.exception_handler(TorporError)
    async def _torpor_error(_: Request, exc: TorporError) -> Response:
        return error_response(exc)

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return error_response(InvalidSpec(format_errors(exc.errors())))

    @api.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(NotFound(f"Not found: {exc.detail}"))
        err = TorporError(str(exc.detail))
        err.status = exc.status_code
        err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        err.code = "http_error"
        return error_response(err)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(TorporError())

    mount_console(api)  # last: its catch-all route serves the console's pages
    return TorporApp(api, Proxy(services.proxy_deps), services)
