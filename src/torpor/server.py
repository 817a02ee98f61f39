"""`torpor serve`: one process running the gateway, the control API and the controller."""

from __future__ import annotations

import logging
import sys

import uvicorn

from torpor.auth import check_admin_key
from torpor.gateway.app import create_app
from torpor.settings import Settings


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
        # Long streams must not hold shutdown forever; workers are stopped after this.
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
