"""Images for functions: `POST /api/images` builds one (or finds it built) and streams the
build as NDJSON lines: `{"event": "log", "line"}`, then `{"event": "done", "image"}` or
`{"event": "error", "message"}`. The body is the image's definition, plus `contents`: its
local files by SHA-256, base64. Admin only: a build runs the definition's commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from torpor.api.deps import AdminDep, ServicesDep
from torpor.errors import BuildError, InvalidSpec
from torpor.functions.image import Image

router = APIRouter(prefix="/api/images", tags=["functions"])


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode() + b"\n"


@router.post("")
async def build(body: dict[str, Any], svc: ServicesDep, _: AdminDep) -> StreamingResponse:
    # The definition, and the contents of its local files by SHA-256 (base64).
    contents = body.pop("contents", None) or {}
    try:
        Image.from_definition(body)
        if not isinstance(contents, dict):
            raise ValueError("contents: an object of base64 strings by sha256")
    except ValueError as exc:
        raise InvalidSpec(str(exc)) from None
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def run() -> None:
        try:
            image = await svc.images.build(
                body,
                lambda text: lines.put_nowait(_line({"event": "log", "line": text})),
                contents,
            )
            lines.put_nowait(_line({"event": "done", "image": image.view()}))
        except (BuildError, ValueError, OSError) as exc:
            lines.put_nowait(_line({"event": "error", "message": str(exc)}))
        finally:
            lines.put_nowait(None)

    async def stream() -> AsyncIterator[bytes]:
        task = asyncio.create_task(run())
        try:
            while (item := await lines.get()) is not None:
                yield item
        finally:
            if not task.done():
                # The client went away: the build stops, and its half-built image goes.
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return StreamingResponse(stream(), media_type="application/x-ndjson")
