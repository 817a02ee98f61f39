"""The background loop shape shared by torpor's workers: tick, then sleep until woken or
until the period has passed. A failing tick is logged and retried on the next one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def tick_forever(
    tick: Callable[[], Awaitable[object]], wake: asyncio.Event, period_s: float, what: str
) -> None:
    while True:
        wake.clear()
        try:
            await tick()
        except Exception:
            log.exception("%s failed; retrying", what)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), period_s)
