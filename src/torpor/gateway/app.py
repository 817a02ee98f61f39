"""The app factory: FastAPI for the control API, the plain-ASGI proxy for inference."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.responses import Response

from torpor import __version__
from torpor.api import async_requests, conversations, deployments, gpus, keys, usage
from torpor.console import mount_console
from torpor.errors import InvalidSpec, NotFound, TorporError, error_response
from torpor.gateway.proxy import Proxy, Receive, Scope, Send
from torpor.services import Services
from torpor.settings import Settings
from torpor.validation import format_errors

log = logging.getLogger(__name__)

_PROXY_PREFIXES = ("/v1/", "/openai/")
# Under /v1 but served by FastAPI: async request status and cancel.
_API_UNDER_V1 = ("/v1/requests/",)


class TorporApp:
    """Top-level ASGI: inference paths go straight to the proxy, the rest to FastAPI."""

    def __init__(self, api: FastAPI, proxy: Proxy, services: Services):
        self.api = api
        self.proxy = proxy
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and path.startswith(_PROXY_PREFIXES)
            and not path.startswith(_API_UNDER_V1)
        ):
            await self.proxy(scope, receive, send)
        else:
            await self.api(scope, receive, send)


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

    api = FastAPI(title="torpor", version=__version__, lifespan=lifespan)
    api.state.services = services
    api.include_router(deployments.router)
    api.include_router(keys.router)
    api.include_router(gpus.router)
    api.include_router(conversations.router)
    api.include_router(async_requests.router)
    api.include_router(usage.router)

    @api.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @api.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        # Prometheus text format; unauthenticated like most scrape targets, and it holds
        # counts only (no prompts, no keys).
        return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)

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
