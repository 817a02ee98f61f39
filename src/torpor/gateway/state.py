"""OpenAI state torpor keeps per API key, in the database so every torpor process (and a
restarted one) sees it: Responses answered by translation (the conversation behind
`previous_response_id`, and `GET`/`DELETE /v1/responses/{id}`), and video jobs (which
deployment and worker hold a job, and which key created it).

Rows older than the retention (`TORPOR_STORED_STATE_RETENTION_S`) are deleted by a sweep.
An in-memory store with the same protocol serves unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import JSON, DateTime, String, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from torpor.auth import ApiKey
from torpor.loops import tick_forever
from torpor.store.tables import Base

log = logging.getLogger(__name__)

JSON_T = dict[str, Any]
# The in-memory store's bound (oldest forgotten first).
MEMORY_CAPACITY = 10_000


class StoredResponseRow(Base):
    __tablename__ = "stored_responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    deployment: Mapped[str] = mapped_column(String(63))
    response: Mapped[JSON_T] = mapped_column(JSON)
    history: Mapped[list[JSON_T]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class VideoJobRow(Base):
    __tablename__ = "video_jobs"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    deployment: Mapped[str] = mapped_column(String(63))
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


@dataclass
class Stored:
    key_id: str
    response: JSON_T
    # The conversation up to and including this answer, as chat messages.
    history: list[JSON_T]
    deployment: str = ""


@dataclass(frozen=True)
class VideoJob:
    id: str
    key_id: str
    deployment: str
    worker_id: str | None


class ResponseStore(Protocol):
    async def get(self, key: ApiKey, response_id: str) -> Stored | None: ...

    async def put(self, response_id: str, stored: Stored) -> None: ...

    async def delete(self, key: ApiKey, response_id: str) -> bool: ...


class MemoryResponseStore:
    """One process's memory, bounded; for tests and tools without a database."""

    def __init__(self, capacity: int = MEMORY_CAPACITY):
        self.capacity = capacity
        self._items: OrderedDict[str, Stored] = OrderedDict()

    async def get(self, key: ApiKey, response_id: str) -> Stored | None:
        stored = self._items.get(response_id)
        return stored if stored is not None and stored.key_id == key.id else None

    async def put(self, response_id: str, stored: Stored) -> None:
        self._items[response_id] = stored
        self._items.move_to_end(response_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    async def delete(self, key: ApiKey, response_id: str) -> bool:
        if await self.get(key, response_id) is None:
            return False
        del self._items[response_id]
        return True


class StoredState:
    """Both kinds of state in the database; `now` is passed in (no clock here)."""

    def __init__(self, engine: AsyncEngine, now: Callable[[], datetime]):
        self._session = async_sessionmaker(engine, expire_on_commit=False)
        self._now = now
        self.responses = _DbResponses(self)
        self.videos = _DbVideoJobs(self)

    async def sweep(self, retention_s: float) -> int:
        """Delete what is older than the retention; returns the rows deleted."""
        cutoff = self._now() - timedelta(seconds=retention_s)
        async with self._session.begin() as s:
            a = await s.execute(
                delete(StoredResponseRow).where(StoredResponseRow.created_at < cutoff)
            )
            b = await s.execute(delete(VideoJobRow).where(VideoJobRow.created_at < cutoff))
        return int(getattr(a, "rowcount", 0) or 0) + int(getattr(b, "rowcount", 0) or 0)


class _DbResponses:
    def __init__(self, state: StoredState):
        self._s = state

    async def get(self, key: ApiKey, response_id: str) -> Stored | None:
        async with self._s._session() as s:
            row = await s.get(StoredResponseRow, response_id)
        if row is None or row.key_id != key.id:
            return None
        return Stored(row.key_id, row.response, row.history, row.deployment)

    async def put(self, response_id: str, stored: Stored) -> None:
        row = StoredResponseRow(
            id=response_id,
            key_id=stored.key_id,
            deployment=stored.deployment,
            response=stored.response,
            history=stored.history,
            created_at=self._s._now(),
        )
        async with self._s._session.begin() as s:
            await s.merge(row)

    async def delete(self, key: ApiKey, response_id: str) -> bool:
        async with self._s._session.begin() as s:
            result = await s.execute(
                delete(StoredResponseRow).where(
                    StoredResponseRow.id == response_id, StoredResponseRow.key_id == key.id
                )
            )
        return bool(getattr(result, "rowcount", 0))


class _DbVideoJobs:
    def __init__(self, state: StoredState):
        self._s = state

    async def record(self, job: VideoJob) -> None:
        row = VideoJobRow(
            id=job.id,
            key_id=job.key_id,
            deployment=job.deployment,
            worker_id=job.worker_id,
            created_at=self._s._now(),
        )
        async with self._s._session.begin() as s:
            await s.merge(row)

    async def get(self, video_id: str) -> VideoJob | None:
        async with self._s._session() as s:
            row = await s.get(VideoJobRow, video_id)
        if row is None:
            return None
        return VideoJob(row.id, row.key_id, row.deployment, row.worker_id)

    async def ids_of(self, key_id: str, deployment: str) -> set[str]:
        async with self._s._session() as s:
            q = select(VideoJobRow.id).where(
                VideoJobRow.key_id == key_id, VideoJobRow.deployment == deployment
            )
            return set((await s.scalars(q)).all())

    async def forget(self, video_id: str) -> None:
        async with self._s._session.begin() as s:
            await s.execute(delete(VideoJobRow).where(VideoJobRow.id == video_id))


class StateSweeper:
    """Runs the retention sweep every `interval_s` (one small loop per process)."""

    def __init__(self, state: StoredState, retention_s: float, interval_s: float):
        self.state, self.retention_s, self.interval_s = state, retention_s, interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(
            tick_forever(self._tick, self._wake, self.interval_s, "stored state sweep"),
            name="torpor-state-sweep",
        )

    async def _tick(self) -> None:
        deleted = await self.state.sweep(self.retention_s)
        if deleted:
            log.info("deleted %d stored responses and video jobs past retention", deleted)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
