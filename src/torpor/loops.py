"""The background loop shape shared by torpor's workers: tick, then sleep until woken or
until the period has passed. A failing tick is logged and retried on the next one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


async def tick_forever(
    tick: Callable[[], Awaitable[T]],
    wake: asyncio.Event,
    period_s: float | Callable[[T | None], float],
    what: str,
) -> None:
    """`period_s` may be a function of the tick's result (None when the tick failed)."""
    while True:
        wake.clear()
        result: T | None = None
        try:
            result = await tick()
        except Exception:
            log.exception("%s failed; retrying", what)
        delay = period_s(result) if callable(period_s) else period_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), delay)
