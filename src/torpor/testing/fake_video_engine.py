"""A fake video-generation engine with vLLM-Omni's Videos API, run as a separate process.

Jobs behave like vLLM-Omni's (and OpenAI's): ``POST /v1/videos`` (multipart form, as the
OpenAI SDK sends it, url-encoded form or JSON) answers a job that is ``queued``, then
``in_progress`` with a rising ``progress``, then ``completed`` after ``--job-seconds``;
``GET /v1/videos/{id}/content`` is then a small real H.264 MP4 clip, encoded by PyAV when
the job completes (a moving colour pattern, ``seconds`` long at 12 frames per second).

Run it with::

    python -m torpor.testing.fake_video_engine --port 8001 [--job-seconds 2] [--fail-prompt X]

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/videos``, ``GET /v1/videos``,
``GET /v1/videos/{id}``, ``GET /v1/videos/{id}/content``, ``DELETE /v1/videos/{id}``,
``GET /stats`` (request counters for tests). A prompt holding the ``--fail-prompt`` text
makes its job end ``failed`` with an error, as a generation that ran out of memory would.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

FPS = 12
MAX_SECONDS = 8
DEFAULT_SIZE = (160, 96)
_SIZE_RE = re.compile(r"^(\d{2,4})x(\d{2,4})$")

JSON = dict[str, Any]


@dataclass
class Job:
    id: str
    prompt: str
    model: str
    seconds: int
    size: tuple[int, int]
    created: float
    fail: bool
    video: bytes | None = None
    encoding: asyncio.Task[bytes] | None = None


@dataclass
class Engine:
    model_id: str
    job_seconds: float
    fail_prompt: str
    jobs: dict[str, Job] = field(default_factory=dict)
    stats: dict[str, int] = field(
        default_factory=lambda: {"creates": 0, "polls": 0, "downloads": 0, "deletes": 0}
    )

    def status(self, job: Job, now: float) -> tuple[str, int]:
        elapsed = now - job.created
        if elapsed >= self.job_seconds:
            return ("failed", 0) if job.fail else ("completed", 100)
        if elapsed < self.job_seconds * 0.1:
            return "queued", 0
        return "in_progress", min(99, int(100 * elapsed / self.job_seconds))

    def view(self, job: Job, now: float) -> JSON:
        status, progress = self.status(job, now)
        done = job.created + self.job_seconds
        body: JSON = {
            "id": job.id,
            "object": "video",
            "model": job.model,
            "prompt": job.prompt,
            "status": status,
            "progress": progress,
            "seconds": str(job.seconds),
            "size": f"{job.size[0]}x{job.size[1]}",
            "quality": "default",
            "created_at": int(job.created),
            "completed_at": int(done) if status in ("completed", "failed") else None,
            "expires_at": None,
            "remixed_from_video_id": None,
            "media_type": "video/mp4",
            "error": None,
        }
        if status == "failed":
            body["error"] = {
                "code": "generation_failed",
                "message": "The diffusion pipeline ran out of memory (fake engine, on purpose)",
            }
        return body


ENGINE = web.AppKey("engine", Engine)


def encode_clip(seconds: int, size: tuple[int, int]) -> bytes:
    """A real H.264 MP4 (yuv420p, fast start) of a moving colour pattern."""
    import av  # the dev extra; only this fake engine needs it

    width, height = size
    with tempfile.TemporaryDirectory(prefix="fake-video-") as tmp:
        path = Path(tmp) / "clip.mp4"
        _encode(av, path, seconds, width, height)
        return path.read_bytes()


def _encode(av: Any, path: Path, seconds: int, width: int, height: int) -> None:
    # Fast start (the index first) needs a second pass over a real file, not a buffer.
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as box:
        stream = box.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for i in range(seconds * FPS):
            frame = av.VideoFrame(width, height, "yuv420p")
            for index, plane in enumerate(frame.planes):
                w = width if index == 0 else width // 2
                h = height if index == 0 else height // 2
                rows = []
                for y in range(h):
                    if index == 0:
                        row = bytes(((x + y + i * 4) * 2) % 256 for x in range(w))
                    else:
                        row = bytes([(i * 8 + index * 90 + y) % 256]) * w
                    rows.append(row + b"\0" * (plane.line_size - w))
                plane.update(b"".join(rows))
            frame.pts = i
            for packet in stream.encode(frame):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)


def _error(
    status: int, message: str, code: str, kind: str = "invalid_request_error"
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": code, "param": None}}
    return web.json_response(body, status=status)


async def _form(request: web.Request) -> JSON:
    kind = request.content_type
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.post()
        return {k: v for k, v in form.items() if isinstance(v, str)}
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _size(value: Any) -> tuple[int, int] | None:
    if value in (None, ""):
        return DEFAULT_SIZE
    m = _SIZE_RE.match(str(value))
    if m is None:
        return None
    w, h = int(m.group(1)), int(m.group(2))
    # Scaled down to a small clip of the same shape (even sides, as H.264 wants).
    scale = max(w / DEFAULT_SIZE[0], h / DEFAULT_SIZE[1], 1.0)
    return max(16, int(w / scale) // 2 * 2), max(16, int(h / scale) // 2 * 2)


async def create(request: web.Request) -> web.Response:
    engine: Engine = request.app[ENGINE]
    engine.stats["creates"] += 1
    form = await _form(request)
    prompt = form.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _error(400, "prompt: field required", "invalid_prompt")
    seconds_text = str(form.get("seconds") or "2")
    if not seconds_text.isdigit() or not 1 <= int(seconds_text) <= MAX_SECONDS:
        return _error(400, f"seconds: must be 1 to {MAX_SECONDS}", "invalid_seconds")
    size = _size(form.get("size"))
    if size is None:
        return _error(400, "size: must be WIDTHxHEIGHT", "invalid_size")
    model = form.get("model") or engine.model_id
    job = Job(
        id=f"video_gen_{uuid.uuid4().hex}",
        prompt=prompt,
        model=str(model),
        seconds=int(seconds_text),
        size=size,
        created=time.time(),
        fail=bool(engine.fail_prompt) and engine.fail_prompt in prompt,
    )
    engine.jobs[job.id] = job
    if not job.fail:
        job.encoding = asyncio.create_task(
            asyncio.to_thread(encode_clip, job.seconds, job.size), name=job.id
        )
    return web.json_response(engine.view(job, job.created))


def _job(request: web.Request) -> Job | web.Response:
    engine: Engine = request.app[ENGINE]
    job = engine.jobs.get(request.match_info["video_id"])
    if job is None:
        return _error(404, f"Video {request.match_info['video_id']} not found", "not_found")
    return job


async def retrieve(request: web.Request) -> web.Response:
    engine: Engine = request.app[ENGINE]
    engine.stats["polls"] += 1
    job = _job(request)
    if isinstance(job, web.Response):
        return job
    return web.json_response(engine.view(job, time.time()))


async def content(request: web.Request) -> web.Response:
    engine: Engine = request.app[ENGINE]
    engine.stats["downloads"] += 1
    job = _job(request)
    if isinstance(job, web.Response):
        return job
    status, _ = engine.status(job, time.time())
    if status != "completed" or job.encoding is None:
        return _error(409, f"Video {job.id} is {status}: no content yet", "video_not_ready")
    if job.video is None:
        job.video = await job.encoding
    return web.Response(
        body=job.video,
        content_type="video/mp4",
        headers={"Content-Disposition": f'attachment; filename="{job.id}.mp4"'},
    )


async def remove(request: web.Request) -> web.Response:
    engine: Engine = request.app[ENGINE]
    engine.stats["deletes"] += 1
    job = _job(request)
    if isinstance(job, web.Response):
        return job
    del engine.jobs[job.id]
    return web.json_response({"id": job.id, "object": "video.deleted", "deleted": True})


async def listing(request: web.Request) -> web.Response:
    engine: Engine = request.app[ENGINE]
    now = time.time()
    data = [engine.view(job, now) for job in engine.jobs.values()]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }
    )


async def health(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def models(request: web.Request) -> web.Response:
    engine: Engine = request.app[ENGINE]
    model = {"id": engine.model_id, "object": "model", "created": 0, "owned_by": "fake"}
    return web.json_response({"object": "list", "data": [model]})


async def stats(request: web.Request) -> web.Response:
    engine: Engine = request.app[ENGINE]
    return web.json_response(engine.stats)


def build_app(engine: Engine) -> web.Application:
    app = web.Application()
    app[ENGINE] = engine
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/videos", create)
    app.router.add_get("/v1/videos", listing)
    app.router.add_get("/v1/videos/{video_id}", retrieve)
    app.router.add_get("/v1/videos/{video_id}/content", content)
    app.router.add_delete("/v1/videos/{video_id}", remove)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model-id", default="fake-video")
    parser.add_argument("--job-seconds", type=float, default=2.0, help="how long a job runs")
    parser.add_argument("--fail-prompt", default="", help="prompts holding this text fail")
    args = parser.parse_args(argv)
    engine = Engine(args.model_id, max(0.0, args.job_seconds), args.fail_prompt)
    web.run_app(build_app(engine), host=args.host, port=args.port, print=None, shutdown_timeout=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
