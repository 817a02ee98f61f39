"""The web console: the built single-page app (console/dist) served at `/`.

The console is built by `scripts/install` (`npm ci && npm run build` in console/). Its
location is `TORPOR_CONSOLE_DIR` when set, else console/dist next to src/ in the repository.
When it is not built, `/` answers a short page that says how to build it; the API works
either way.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from torpor.errors import NotFound

# Paths that belong to the API or the proxy: never answered with the SPA's index.html.
_RESERVED = ("api", "v1", "openai", "healthz", "metrics", "docs", "redoc", "openapi.json")

NOT_BUILT_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>torpor</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem}
code{background:#f1f3f5;padding:.1rem .3rem;border-radius:4px}</style></head>
<body><h1>torpor</h1>
<p>The API is running, but the console is not built.</p>
<p>Build it with <code>scripts/install</code> (it runs
<code>npm ci &amp;&amp; npm run build</code> in <code>console/</code>; Node.js 20 and npm are
needed), then reload this page.</p>
<p>The API is served under <code>/api</code> and the OpenAI routes under <code>/v1</code>.</p>
</body></html>
"""


def console_dir() -> Path:
    configured = os.environ.get("TORPOR_CONSOLE_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / "console" / "dist"


def mount_console(api: FastAPI, directory: Path | None = None) -> None:
    """Serve the console's files, with index.html for every other non-API GET path.

    Call it after every other route is registered: its catch-all route must come last.
    """
    root = (directory or console_dir()).resolve()

    @api.get("/{path:path}", include_in_schema=False, response_model=None)
    async def console(path: str, request: Request) -> Response:
        first = path.split("/", 1)[0]
        if first in _RESERVED:
            raise NotFound(f"Not found: {request.url.path}")
        index = root / "index.html"
        if not index.is_file():
            return HTMLResponse(NOT_BUILT_HTML)
        if path:
            candidate = (root / path).resolve()
            if candidate.is_relative_to(root) and candidate.is_file():
                cache = "public, max-age=31536000, immutable" if first == "assets" else "no-cache"
                return FileResponse(candidate, headers={"Cache-Control": cache})
            if first == "assets":
                raise NotFound(f"Not found: {request.url.path}")
        return FileResponse(index, headers={"Cache-Control": "no-cache"})
