"""The meter: takes usage from the request path and the controller, keeps month-to-date
totals in memory for budget checks, and writes everything to the store in batches.

Nothing here blocks a request: `record` appends to a buffer and bumps counters; a
background task flushes the buffer every `flush_interval_s` (at most 1 s, so a crash
loses at most that much) and once more on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from torpor.auth import ApiKey
from torpor.errors import TorporError
from torpor.metering.budget import Caps, Spent, over_budget
from torpor.metering.metrics import Metrics
from torpor.metering.pricing import Prices
from torpor.metering.tables import (
    StorageHourlyRow,
    UsageEventRow,
    UsageHourlyRow,
    WorkerSessionRow,
)
from torpor.store import Store

log = logging.getLogger(__name__)


# Rows per insert statement when flushing (bounds how long one slice holds the loop).
FLUSH_SLICE = 256
# Raw events past retention are deleted this often (rollups are kept).
PRUNE_EVERY = timedelta(hours=1)


class BudgetExceeded(TorporError):
    status = 429
    type = "budget_exceeded"
    code = "budget_exceeded"
    default_message = "Budget exceeded"


@dataclass
class RequestUsage:
    at: datetime
    deployment: str
    key_id: str
    session_id: str | None
    route: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    ttft_ms: float | None
    latency_ms: float
    queue_ms: float
    cold_start: bool
    stream: bool
    cost: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class WorkerSession:
    worker_id: str
    deployment: str
    gpu_kind: str
    gpu_count: int
    hourly_rate: float
    started_at: datetime
    ready_at: datetime | None = None
    stopped_at: datetime | None = None
    reason: str | None = None

    @property
    def startup_s(self) -> float | None:
        if self.ready_at is None:
            return None
        return (self.ready_at - self.started_at).total_seconds()

    def seconds(self, now: datetime) -> float:
        return max(0.0, ((self.stopped_at or now) - self.started_at).total_seconds())


@dataclass
class Reservation:
    """What an admitted request may still spend; released when its usage is recorded."""

    key_id: str
    deployment: str
    tokens: int
    usd: float


@dataclass
class _Month:
    key: str
    # First instant of the next month: the request path compares, never formats.
    ends: datetime
    by_key: dict[str, Spent] = field(default_factory=dict)
    by_deployment: dict[str, Spent] = field(default_factory=dict)


def month_key(at: datetime) -> str:
    return at.strftime("%Y-%m")


def hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def month_start(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _new_month(at: datetime) -> _Month:
    start = month_start(at)
    return _Month(month_key(start), ends=(start + timedelta(days=32)).replace(day=1))


class Meter:
    def __init__(
        self,
        store: Store,
        prices_for: Callable[[str], Prices],
        caps_for_deployment: Callable[[str], Caps],
        storage_dirs: Callable[[], dict[str, Path]],
        metrics: Metrics,
        flush_interval_s: float,
        storage_interval_s: float,
        raw_retention_days: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.store = store
        self.prices_for = prices_for
        self.caps_for_deployment = caps_for_deployment
        self.storage_dirs = storage_dirs
        self.metrics = metrics
        self.flush_interval_s = min(flush_interval_s, 1.0)
        self.storage_interval_s = storage_interval_s
        self.raw_retention = timedelta(days=raw_retention_days)
        self.clock = clock
        self._events: list[RequestUsage] = []
        self._sessions: dict[str, WorkerSession] = {}
        self._dirty_sessions: set[str] = set()
        self._month = _new_month(clock())
        # Reserved by requests in flight, by key id and by deployment.
        self._reserved_key: dict[str, Spent] = {}
        self._reserved_dep: dict[str, Spent] = {}
        self.total_requests: dict[str, int] = defaultdict(int)
        self.last_startup_s: dict[str, float] = {}
        self._storage_sampled_at: datetime | None = None
        self._pruned_at: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()

    # -- start and stop -------------------------------------------------------------------

    async def load(self) -> None:
        """Month-to-date spend and all-time request counts, from the rollups."""
        now = self.clock()
        async with AsyncSession(self.store.engine) as s:
            h = UsageHourlyRow
            rows = await s.execute(
                select(
                    h.key_id,
                    h.deployment,
                    func.sum(h.prompt_tokens + h.completion_tokens),
                    func.sum(h.cost),
                )
                .where(h.hour >= month_start(now))
                .group_by(h.key_id, h.deployment)
            )
            for key_id, dep, tokens, cost in rows:
                self._add_spend(key_id, dep, int(tokens or 0), float(cost or 0.0))
            totals = await s.execute(
                select(h.deployment, func.sum(h.requests)).group_by(h.deployment)
            )
            for dep, n in totals:
                self.total_requests[dep] = int(n or 0)
            last = await s.execute(
                select(WorkerSessionRow.deployment, WorkerSessionRow.startup_s)
                .where(WorkerSessionRow.startup_s.is_not(None))
                .order_by(WorkerSessionRow.started_at)
            )
            for dep, startup in last:
                if startup is not None:
                    self.last_startup_s[dep] = float(startup)
            # Sessions left open by a crash end at the last moment torpor was known alive.
            open_rows = (
                await s.scalars(
                    select(WorkerSessionRow).where(WorkerSessionRow.stopped_at.is_(None))
                )
            ).all()
            for row in open_rows:
                row.stopped_at = row.ready_at or row.started_at
                row.reason = "torpor restarted"
            await s.commit()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="torpor-meter")

    async def close(self) -> None:
        """Stop the loop and flush what is left: nothing is lost on a clean shutdown."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
                now = self.clock()
                if (
                    self._storage_sampled_at is None
                    or (now - self._storage_sampled_at).total_seconds() >= self.storage_interval_s
                ):
                    await self.sample_storage()
                if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY:
                    self._pruned_at = now
                    deleted = await self.prune()
                    if deleted:
                        log.info("deleted %d raw usage events past retention", deleted)
            except Exception:
                log.exception("metering flush failed; will retry")

    # -- request path ---------------------------------------------------------------------

    def admit(self, key: ApiKey, deployment: str, max_tokens: int | None) -> Reservation:
        """Refuse when month-to-date spend plus what requests in flight have reserved has
        reached a cap; otherwise reserve this request's `max_tokens` (and their price) until
        it finishes. Concurrent requests thus cannot all slip under a cap at once: the
        overshoot is bounded by the requests already admitted when the cap was reached."""
        self._roll_month()
        prices = self.prices_for(deployment)
        tokens = max(1, max_tokens or 0)
        usd = prices.request_cost(0, tokens)
        message = over_budget(
            f"key {key.name!r}",
            _plus(self._month.by_key.get(key.id), self._reserved_key.get(key.id)),
            Caps(key.budget_usd_monthly, key.budget_tokens_monthly),
        )
        if message is None:
            caps = self.caps_for_deployment(deployment)
            if caps.any:
                spent = _plus(
                    self._month.by_deployment.get(deployment), self._reserved_dep.get(deployment)
                )
                message = over_budget(f"deployment {deployment!r}", spent, caps)
        if message is not None:
            raise BudgetExceeded(message)
        hold = Reservation(key.id, deployment, tokens, usd)
        self._reserve(hold, 1)
        return hold

    def check(self, key: ApiKey, deployment: str) -> None:
        """Refuse now if a request would be refused; reserves nothing (async submit)."""
        self._reserve(self.admit(key, deployment, None), -1)

    def record(self, usage: RequestUsage, hold: Reservation | None = None) -> None:
        if hold is not None:
            self._reserve(hold, -1)
        usage.cost = self.prices_for(usage.deployment).request_cost(
            usage.prompt_tokens, usage.completion_tokens
        )
        self._roll_month()
        self._add_spend(usage.key_id, usage.deployment, usage.tokens, usage.cost)
        self.total_requests[usage.deployment] += 1
        self._events.append(usage)
        self.metrics.observe_request(usage)

    def _reserve(self, hold: Reservation, sign: int) -> None:
        for table, name in (
            (self._reserved_key, hold.key_id),
            (self._reserved_dep, hold.deployment),
        ):
            old = table.get(name, Spent())
            new = Spent(old.usd + sign * hold.usd, old.tokens + sign * hold.tokens)
            if new.tokens <= 0:
                table.pop(name, None)
            else:
                table[name] = new

    def key_usage(self, key_id: str) -> Spent:
        self._roll_month()
        return self._month.by_key.get(key_id, Spent())

    # -- worker time ----------------------------------------------------------------------

    def worker_started(
        self, worker_id: str, deployment: str, gpu_kind: str, gpu_count: int, at: datetime
    ) -> None:
        rate = self.prices_for(deployment).gpu_hourly
        self._sessions[worker_id] = WorkerSession(
            worker_id, deployment, gpu_kind, gpu_count, rate, at
        )
        self._dirty_sessions.add(worker_id)

    def worker_ready(self, worker_id: str, at: datetime) -> None:
        session = self._sessions.get(worker_id)
        if session is None:
            return
        session.ready_at = at
        startup = session.startup_s or 0.0
        self.last_startup_s[session.deployment] = startup
        self.metrics.observe_cold_start(session.deployment, startup)
        self._dirty_sessions.add(worker_id)

    def worker_stopped(self, worker_id: str, at: datetime, reason: str | None) -> None:
        session = self._sessions.get(worker_id)
        if session is None or session.stopped_at is not None:
            return
        session.stopped_at, session.reason = at, reason
        prices = self.prices_for(session.deployment)
        cost = prices.worker_cost(session.seconds(at), session.gpu_count)
        self.metrics.observe_worker_cost(session.deployment, cost)
        self._dirty_sessions.add(worker_id)

    # -- flushing -------------------------------------------------------------------------

    async def flush(self) -> None:
        async with self._flush_lock:
            events, self._events = self._events, []
            dirty, self._dirty_sessions = self._dirty_sessions, set()
            sessions = [self._sessions[w] for w in dirty if w in self._sessions]
            if not events and not sessions:
                return
            try:
                async with AsyncSession(self.store.engine) as s, s.begin():
                    # Executemany of plain rows, in slices: preparing the parameters runs on
                    # the event loop, and one slice must not stall requests for long.
                    for at in range(0, len(events), FLUSH_SLICE):
                        rows = [_event_values(e) for e in events[at : at + FLUSH_SLICE]]
                        await s.execute(insert(_EVENTS_TABLE), rows)
                    if events:
                        await _add_rollups(s, events)
                    for ws in sessions:
                        await s.merge(_session_row(ws))
            except Exception:
                # Keep them for the next flush rather than lose them.
                self._events[:0] = events
                self._dirty_sessions |= dirty
                raise
            for ws in sessions:
                if ws.stopped_at is not None:
                    self._sessions.pop(ws.worker_id, None)

    async def sample_storage(self) -> None:
        now = self.clock()
        since = self._storage_sampled_at
        self._storage_sampled_at = now
        dirs = self.storage_dirs()
        sizes = await asyncio.to_thread(lambda: {d: _dir_bytes(p) for d, p in dirs.items()})
        if since is None:
            since = now
        seconds = (now - since).total_seconds()
        async with AsyncSession(self.store.engine) as s, s.begin():
            for dep, size in sizes.items():
                gb = size / 1e9
                gb_s = gb * seconds
                cost = self.prices_for(dep).storage_cost(gb_s)
                self.metrics.observe_storage(dep, gb, cost)
                await _upsert_add(
                    s,
                    StorageHourlyRow,
                    {"hour": hour_of(now), "deployment": dep},
                    {"gb_seconds": gb_s, "cost": cost},
                    {"last_gb": gb},
                )

    async def prune(self) -> int:
        """Delete raw events past retention (rollups stay)."""
        from sqlalchemy import delete

        cutoff = self.clock() - self.raw_retention
        async with AsyncSession(self.store.engine) as s, s.begin():
            result = await s.execute(delete(UsageEventRow).where(UsageEventRow.at < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)

    def open_sessions(self) -> Iterable[WorkerSession]:
        return list(self._sessions.values())

    # -- internals ------------------------------------------------------------------------

    def _roll_month(self) -> None:
        now = self.clock()
        if now >= self._month.ends:
            self._month = _new_month(now)

    def _add_spend(self, key_id: str, deployment: str, tokens: int, cost: float) -> None:
        for table, name in ((self._month.by_key, key_id), (self._month.by_deployment, deployment)):
            old = table.get(name, Spent())
            table[name] = Spent(old.usd + cost, old.tokens + tokens)


def _plus(a: Spent | None, b: Spent | None) -> Spent:
    a, b = a or Spent(), b or Spent()
    return Spent(a.usd + b.usd, a.tokens + b.tokens)


# The Core table: an executemany without the ORM's per-row bookkeeping.
_EVENTS_TABLE = cast(Table, UsageEventRow.__table__)


def _event_values(e: RequestUsage) -> dict[str, Any]:
    return {
        "at": e.at,
        "deployment": e.deployment,
        "key_id": e.key_id,
        "session_id": e.session_id,
        "route": e.route,
        "status": e.status,
        "prompt_tokens": e.prompt_tokens,
        "completion_tokens": e.completion_tokens,
        "estimated": e.estimated,
        "ttft_ms": e.ttft_ms,
        "latency_ms": e.latency_ms,
        "queue_ms": e.queue_ms,
        "cold_start": e.cold_start,
        "stream": e.stream,
        "cost": e.cost,
    }


def _session_row(ws: WorkerSession) -> WorkerSessionRow:
    return WorkerSessionRow(
        worker_id=ws.worker_id,
        deployment=ws.deployment,
        gpu_kind=ws.gpu_kind,
        gpu_count=ws.gpu_count,
        hourly_rate=ws.hourly_rate,
        started_at=ws.started_at,
        ready_at=ws.ready_at,
        stopped_at=ws.stopped_at,
        startup_s=ws.startup_s,
        reason=ws.reason,
    )


async def _add_rollups(s: AsyncSession, events: list[RequestUsage]) -> None:
    groups: dict[tuple[datetime, str, str], dict[str, Any]] = {}
    for e in events:
        g = groups.setdefault(
            (hour_of(e.at), e.deployment, e.key_id),
            {
                "requests": 0,
                "errors": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "latency_ms_sum": 0.0,
                "ttft_ms_sum": 0.0,
                "ttft_count": 0,
                "cold_starts": 0,
                "cost": 0.0,
            },
        )
        g["requests"] += 1
        g["errors"] += 1 if e.status >= 400 else 0
        g["prompt_tokens"] += e.prompt_tokens
        g["completion_tokens"] += e.completion_tokens
        g["latency_ms_sum"] += e.latency_ms
        if e.ttft_ms is not None:
            g["ttft_ms_sum"] += e.ttft_ms
            g["ttft_count"] += 1
        g["cold_starts"] += 1 if e.cold_start else 0
        g["cost"] += e.cost
    for (hour, dep, key_id), values in groups.items():
        await _upsert_add(
            s, UsageHourlyRow, {"hour": hour, "deployment": dep, "key_id": key_id}, values
        )


async def _upsert_add(
    s: AsyncSession,
    model: Any,
    keys: dict[str, Any],
    add: dict[str, Any],
    replace: dict[str, Any] | None = None,
) -> None:
    """INSERT the row, or add `add` to the existing counters (one statement, no race)."""
    table = model.__table__
    dialect = s.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).values(**keys, **add, **(replace or {}))
    update = {name: table.c[name] + stmt.excluded[name] for name in add}
    update.update({name: stmt.excluded[name] for name in replace or {}})
    await s.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=update))


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
