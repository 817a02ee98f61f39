"""`torpor serve`: one process running the gateway, the control API and the controller.

Shutdown on SIGTERM: stop accepting connections, answer every queued request a 503 with
Retry-After (an SSE error event on a held stream), let requests already on a worker finish
for `TORPOR_SHUTDOWN_GRACE_S`, end the ones still running with the same error, then stop
the workers (the app's lifespan).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys

import uvicorn

from torpor.app import TorporApp, create_app
from torpor.auth import check_admin_key
from torpor.settings import Settings

log = logging.getLogger(__name__)

# uvicorn's own cut-off comes this long after torpor's, which ends requests cleanly first.
_UVICORN_MARGIN_S = 5.0


class GracefulServer(uvicorn.Server):
    """uvicorn, with torpor's drain before it waits for connections to close."""

    def __init__(self, config: uvicorn.Config, app: TorporApp, grace_s: float):
        super().__init__(config)
        self._app = app
        self._grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._app.begin_shutdown()
        inflight = self._app.proxy.inflight
        log.info("draining: %d request(s) in flight, grace %.0fs", inflight, self._grace_s)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._grace_s, self._abort)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    def _abort(self) -> None:
        ended = self._app.abort_inflight()
        if ended:
            log.warning("shutdown grace over: ended %d request(s) with a 503", ended)


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.runtime == "ray":
        from torpor.errors import RayUnavailable
        from torpor.runtime.ray import connect

        try:
            connect(settings.ray_address)
        except RayUnavailable as exc:
            print(f"torpor: error: {exc.message}", file=sys.stderr)
            raise SystemExit(2) from None
    if settings.admin_key:
        try:
            check_admin_key(settings.admin_key)
        except ValueError as exc:
            print(f"torpor: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    app = create_app(settings)
    print(
        f"torpor: serving on http://{settings.host}:{settings.port} (data dir {settings.data_dir})",
        flush=True,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        # A backstop only: torpor ends what is left at the grace, uvicorn cuts after it.
        timeout_graceful_shutdown=int(settings.shutdown_grace_s + _UVICORN_MARGIN_S),
    )
    GracefulServer(config, app, settings.shutdown_grace_s).run()
