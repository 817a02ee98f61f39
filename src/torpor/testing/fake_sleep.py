"""vLLM's sleep API for the fake engine: `POST /sleep?level=N`, `POST /wake_up`,
`GET /is_sleeping`, with the delays of a real GPU engine (`--sleep-delay-ms`,
`--wake-delay-ms`). While asleep, completion requests fail with 503 (a real vLLM has no
weights to run then): torpor must never route one to a sleeping worker.

`GET /sleep_stats` counts the calls: `sleeps`, `wakes`, `level` (the last sleep's),
`sleeping`, and `calls` (each call, in order, as "POST /sleep?level=1")."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class SleepState:
    sleep_delay_s: float = 0.0
    wake_delay_s: float = 0.0
    sleeping: bool = False
    level: int = 0
    sleeps: int = 0
    wakes: int = 0
    calls: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "sleeping": self.sleeping,
            "level": self.level,
            "sleeps": self.sleeps,
            "wakes": self.wakes,
            "calls": self.calls,
        }


SLEEP_KEY = web.AppKey("sleep", SleepState)


def _call(request: web.Request) -> str:
    return f"{request.method} {request.path_qs}"


async def handle_sleep(request: web.Request) -> web.Response:
    state = request.app[SLEEP_KEY]
    try:
        level = int(request.query.get("level", "1"))
    except ValueError:
        level = 0
    if level not in (1, 2):
        return web.json_response({"error": "level must be 1 or 2"}, status=400)
    state.calls.append(_call(request))
    await asyncio.sleep(state.sleep_delay_s)
    state.sleeping, state.level = True, level
    state.sleeps += 1
    return web.Response(status=200)


async def handle_wake_up(request: web.Request) -> web.Response:
    state = request.app[SLEEP_KEY]
    state.calls.append(_call(request))
    await asyncio.sleep(state.wake_delay_s)
    # After level 2, `tags=weights` wakes the weights only; the KV cache follows.
    if request.query.get("tags") != "weights":
        state.sleeping = False
        state.wakes += 1
    return web.Response(status=200)


async def handle_control(request: web.Request) -> web.Response:
    """/collective_rpc and /reset_prefix_cache: recorded, answered 200."""
    request.app[SLEEP_KEY].calls.append(_call(request))
    return web.json_response({})


async def handle_is_sleeping(request: web.Request) -> web.Response:
    return web.json_response({"is_sleeping": request.app[SLEEP_KEY].sleeping})


async def handle_sleep_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SLEEP_KEY].as_json())


def asleep_response(app: web.Application) -> web.Response | None:
    """The answer to a completion request while asleep, else None."""
    if app[SLEEP_KEY].sleeping:
        return web.json_response(
            {"error": {"message": "engine is sleeping", "type": "server_error", "code": None}},
            status=503,
        )
    return None


def add_sleep_routes(app: web.Application, sleep_delay_ms: float, wake_delay_ms: float) -> None:
    app[SLEEP_KEY] = SleepState(sleep_delay_ms / 1000.0, wake_delay_ms / 1000.0)
    app.router.add_post("/sleep", handle_sleep)
    app.router.add_post("/wake_up", handle_wake_up)
    app.router.add_post("/collective_rpc", handle_control)
    app.router.add_post("/reset_prefix_cache", handle_control)
    app.router.add_get("/is_sleeping", handle_is_sleeping)
    app.router.add_get("/sleep_stats", handle_sleep_stats)
