"""Retention: ended async requests (and their results) are deleted after a while."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from torpor.asyncreq.store import AsyncStore

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(
        self,
        store: AsyncStore,
        now: Callable[[], datetime],
        retention_s: float,
        interval_s: float,
    ):
        self._store = store
        self._now = now
        self._retention = timedelta(seconds=retention_s)
        self._interval_s = interval_s
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="torpor-async-retention")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    async def sweep(self) -> int:
        deleted = await self._store.sweep(self._now() - self._retention)
        if deleted:
            log.info("deleted %d async request(s) past retention", deleted)
        return deleted

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("async retention sweep failed")
            await asyncio.sleep(self._interval_s)
