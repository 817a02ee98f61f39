"""The meter: takes usage from the request path and the controller, keeps month-to-date
totals in memory for budget checks, and writes everything to the store in batches.

Nothing here blocks a request: `admit` and `record` work on in-memory totals; a
background task flushes the buffer every `flush_interval_s` (at most 1 s, so a crash
loses at most that much) and once more on shutdown. Worker GPU time is accrued every
`heartbeat_s` (split between the keys served and the deployment, torpor.metering.gpu) and
written with the sessions' heartbeat in one transaction: after a crash a session ends at
its last heartbeat, exactly where its accrued GPU time ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from torpor.auth import ApiKey
from torpor.metering import writes
from torpor.metering.budget import Caps, Spent, over_budget
from torpor.metering.gpu import split_interval
from torpor.metering.metrics import Metrics
from torpor.metering.pricing import Prices
from torpor.metering.records import (
    NANO,
    BudgetExceeded,
    RequestUsage,
    Reservation,
    WorkerSession,
    month_start,
    nano_usd,
    new_month,
)
from torpor.metering.reserve import Grant, ask_of, left_of, plan, with_limit
from torpor.metering.tables import (
    GpuHourlyRow,
    StorageHourlyRow,
    UsageEventRow,
    UsageHourlyRow,
    WorkerSessionRow,
)
from torpor.metering.writes import GpuDelta, hour_of
from torpor.store import Store
from torpor.store.db import as_utc

log = logging.getLogger(__name__)

__all__ = ["BudgetExceeded", "Meter", "RequestUsage", "Reservation", "WorkerSession", "hour_of"]

# Rows per insert statement when flushing (bounds how long one slice holds the loop).
FLUSH_SLICE = 256
# Raw events past retention are deleted this often (rollups are kept).
PRUNE_EVERY = timedelta(hours=1)
# Context limit of a deployment that declares none and whose engine options name none.
DEFAULT_CONTEXT_TOKENS = 32768
# A read that saw a flush commit while it ran is tried again, this many times in all.
READ_TRIES = 3
T = TypeVar("T")


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
        context_for: Callable[[str], int] = lambda _: DEFAULT_CONTEXT_TOKENS,
        heartbeat_s: float = 10.0,
        reservation_ttl_s: float = 3600.0,
    ):
        self.store = store
        self.prices_for = prices_for
        self.caps_for_deployment = caps_for_deployment
        self.context_for = context_for
        self.storage_dirs = storage_dirs
        self.metrics = metrics
        self.flush_interval_s = min(flush_interval_s, 1.0)
        self.storage_interval_s = storage_interval_s
        self.heartbeat_s = heartbeat_s
        self.reservation_ttl_s = reservation_ttl_s
        self.raw_retention = timedelta(days=raw_retention_days)
        self.clock = clock
        self._events: list[RequestUsage] = []
        self._gpu: list[GpuDelta] = []
        # What a flush is writing now: still visible to reads until it is committed.
        self._flushing: tuple[list[RequestUsage], list[GpuDelta]] = ([], [])
        self.flushes = 0
        self._sessions: dict[str, WorkerSession] = {}
        self._dirty_sessions: set[str] = set()
        # Sessions a crash left open, closed at their heartbeat; resumed if adopted.
        self._closed_by_restart: dict[str, datetime] = {}
        self._month = new_month(clock())
        # Reserved by requests in flight, by key id and by deployment.
        self._reserved_key: dict[str, Spent] = {}
        self._reserved_dep: dict[str, Spent] = {}
        self._holds: dict[int, Reservation] = {}
        self.total_requests: dict[str, int] = defaultdict(int)
        self.last_startup_s: dict[str, float] = {}
        self._storage_sampled_at: datetime | None = None
        self._accrued_at: datetime | None = None
        self._pruned_at: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()

    # -- start and stop -------------------------------------------------------------------

    async def load(self) -> None:
        """Month-to-date spend (tokens, GPU, storage) and all-time request counts."""
        now = self.clock()
        start = month_start(now)
        async with AsyncSession(self.store.engine) as s:
            h = UsageHourlyRow
            rows = await s.execute(
                select(
                    h.key_id,
                    h.deployment,
                    func.sum(h.prompt_tokens + h.completion_tokens),
                    func.sum(h.cost_nusd),
                )
                .where(h.hour >= start)
                .group_by(h.key_id, h.deployment)
            )
            for key_id, dep, tokens, nusd in rows:
                self._add_spend(key_id, dep, int(tokens or 0), int(nusd or 0) / NANO)
            g = GpuHourlyRow
            gpu = await s.execute(
                select(g.key_id, g.deployment, func.sum(g.cost_nusd))
                .where(g.hour >= start)
                .group_by(g.key_id, g.deployment)
            )
            for key_id, dep, nusd in gpu:
                self._add_gpu_spend(dep, key_id or None, int(nusd or 0) / NANO)
            st = StorageHourlyRow
            storage = await s.execute(
                select(st.deployment, func.sum(st.cost_nusd))
                .where(st.hour >= start)
                .group_by(st.deployment)
            )
            for dep, nusd in storage:
                self._add_dep_usd(dep, int(nusd or 0) / NANO)
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
            # Sessions left open by a crash end at their last heartbeat: GPU time was
            # accrued up to it in the same transaction.
            open_rows = (
                await s.scalars(
                    select(WorkerSessionRow).where(WorkerSessionRow.stopped_at.is_(None))
                )
            ).all()
            for row in open_rows:
                row.stopped_at = row.heartbeat_at or row.ready_at or row.started_at
                row.reason = "torpor restarted"
                self._closed_by_restart[row.worker_id] = as_utc(row.stopped_at)
            await s.commit()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="torpor-meter")

    async def close(self) -> None:
        """Stop the loop, accrue and flush what is left: nothing is lost on a clean stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.accrue(self.clock())
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                now = self.clock()
                self._expire_holds(time.monotonic())
                if (
                    self._accrued_at is None
                    or (now - self._accrued_at).total_seconds() >= self.heartbeat_s
                ):
                    self.accrue(now)
                await self.flush()
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

    def budgeted(self, key: ApiKey, deployment: str) -> bool:
        """Whether any budget applies to this request: without one, the request path does
        no budget work at all (no body read, no count, no reservation)."""
        return (
            key.budget_usd_monthly is not None
            or key.budget_tokens_monthly is not None
            or key.budget_gpu_usd_monthly is not None
            or self.caps_for_deployment(deployment).any
        )

    def admit(
        self,
        key: ApiKey,
        deployment: str,
        route: str,
        payload: dict[str, Any],
        prompt_tokens: int | None = None,
    ) -> Reservation:
        """Refuse when a budget is spent, or when this request cannot fit in what is left;
        otherwise reserve its prompt (`prompt_tokens` as the engine counted it, else the
        upper estimate from the parsed body) and completion limit until it ends, lowering
        that limit to what the tightest budget has left (torpor.metering.reserve)."""
        self._roll_month()
        key_caps = Caps(key.budget_usd_monthly, key.budget_tokens_monthly)
        dep_caps = self.caps_for_deployment(deployment)
        if not key_caps.any and not dep_caps.any and key.budget_gpu_usd_monthly is None:
            return Reservation(key.id, deployment, 0, 0.0, released=True)
        key_spent = _plus(self._month.by_key.get(key.id), self._reserved_key.get(key.id))
        dep_spent = (
            _plus(self._month.by_deployment.get(deployment), self._reserved_dep.get(deployment))
            if dep_caps.any
            else _NONE_SPENT
        )
        self._refuse_if_spent(key, deployment, key_spent, key_caps, dep_spent, dep_caps)
        # Only the budgets that cap something (an uncapped one leaves every limit alone).
        lefts = []
        if key_caps.any:
            lefts.append(left_of(f"key {key.name!r}", key_spent, key_caps))
        if dep_caps.any:
            lefts.append(left_of(f"deployment {deployment!r}", dep_spent, dep_caps))
        ask = ask_of(route, payload, prompt_tokens)
        grant = plan(ask, self.prices_for(deployment), self.context_for(deployment), lefts)
        if isinstance(grant, str):
            raise BudgetExceeded(grant)
        hold = self._hold(key.id, deployment, grant)
        if grant.set_limit is not None:
            hold.body = with_limit(payload, ask, grant.set_limit)
        return hold

    def check(self, key: ApiKey, deployment: str) -> None:
        """Refuse now if a budget is spent; reserves nothing (async submit: the request
        reserves when it runs)."""
        self._roll_month()
        self._refuse_if_spent(
            key,
            deployment,
            _plus(self._month.by_key.get(key.id), self._reserved_key.get(key.id)),
            Caps(key.budget_usd_monthly, key.budget_tokens_monthly),
            _plus(self._month.by_deployment.get(deployment), self._reserved_dep.get(deployment)),
            self.caps_for_deployment(deployment),
        )

    def _refuse_if_spent(
        self,
        key: ApiKey,
        deployment: str,
        key_spent: Spent,
        key_caps: Caps,
        dep_spent: Spent,
        dep_caps: Caps,
    ) -> None:
        message = over_budget(f"key {key.name!r}", key_spent, key_caps)
        gpu_cap = key.budget_gpu_usd_monthly
        if message is None and gpu_cap is not None:
            gpu = self._month.gpu_by_key.get(key.id, 0.0)
            if gpu >= gpu_cap:
                message = (
                    f"GPU budget exceeded for key {key.name!r}: ${gpu:.6f} of GPU time "
                    f"attributed, cap ${gpu_cap:.6f}"
                )
        if message is None and dep_caps.any:
            message = over_budget(f"deployment {deployment!r}", dep_spent, dep_caps)
        if message is not None:
            raise BudgetExceeded(message)

    def scale_refusal(self, deployment: str) -> str | None:
        """Why the deployment may not start workers now (its budget is spent), or None."""
        self._roll_month()
        caps = self.caps_for_deployment(deployment)
        if not caps.any:
            return None
        spent = self._month.by_deployment.get(deployment, Spent())
        message = over_budget(f"deployment {deployment!r}", spent, caps)
        return f"{message} (GPU time, storage and tokens); scale-up refused" if message else None

    def record(self, usage: RequestUsage, hold: Reservation | None = None) -> None:
        if hold is not None:
            self._release(hold)
        usage.cost_nusd = self.prices_for(usage.deployment).request_nusd(
            usage.prompt_tokens, usage.completion_tokens
        )
        self._roll_month()
        self._add_spend(usage.key_id, usage.deployment, usage.tokens, usage.cost_nusd / NANO)
        self.total_requests[usage.deployment] += 1
        self._events.append(usage)
        self.metrics.observe_request(usage)

    def serving(self, worker_id: str, key_id: str, cold: bool) -> Callable[[], None]:
        """A request of `key_id` runs on the worker from now; call the result when it ends.
        Its busy time is charged to the key (chargeback)."""
        ws = self._sessions.get(worker_id)
        if ws is None or ws.stopped_at is not None:
            return _nothing
        now = self.clock()
        ws.busy.begin(key_id, now)
        if cold and ws.cold_key is None and ws.ready_at is not None:
            ws.cold_key = key_id
            self._gpu.append(
                GpuDelta(
                    hour_of(now),
                    ws.deployment,
                    key_id,
                    cold_start_gpu_seconds=(ws.startup_s or 0.0) * ws.gpu_count,
                )
            )

        def done() -> None:
            if ws.stopped_at is None:
                ws.busy.end(key_id, self.clock())

        return done

    def _hold(self, key_id: str, deployment: str, grant: Grant) -> Reservation:
        hold = Reservation(
            key_id,
            deployment,
            grant.tokens,
            float(grant.usd),
            expires=time.monotonic() + self.reservation_ttl_s,
        )
        self._holds[hold.id] = hold
        self._reserve(hold, 1)
        return hold

    def _release(self, hold: Reservation) -> None:
        if hold.released:
            return
        hold.released = True
        self._holds.pop(hold.id, None)
        self._reserve(hold, -1)

    def _expire_holds(self, now: float) -> None:
        for hold in [h for h in self._holds.values() if h.expires <= now]:
            log.warning("released a reservation of key %s that outlived its request", hold.key_id)
            self._release(hold)

    def _reserve(self, hold: Reservation, sign: int) -> None:
        for table, name in (
            (self._reserved_key, hold.key_id),
            (self._reserved_dep, hold.deployment),
        ):
            old = table.get(name, Spent())
            new = Spent(old.usd + sign * hold.usd, old.tokens + sign * hold.tokens)
            if new.tokens <= 0 and new.usd <= 1e-12:
                table.pop(name, None)
            else:
                table[name] = new

    def key_usage(self, key_id: str) -> Spent:
        self._roll_month()
        return self._month.by_key.get(key_id, Spent())

    def key_gpu_usd(self, key_id: str) -> float:
        self._roll_month()
        return self._month.gpu_by_key.get(key_id, 0.0)

    # -- worker time ----------------------------------------------------------------------

    def worker_started(
        self, worker_id: str, deployment: str, gpu_kind: str, gpu_count: int, at: datetime
    ) -> None:
        prices = self.prices_for(deployment)
        ws = WorkerSession(worker_id, deployment, gpu_kind, gpu_count, prices.gpu_hourly, at)
        ws.sleeping_rate = prices.sleeping_hourly
        # A worker adopted after a crash: billed from its last heartbeat on (it ran meanwhile).
        ws.accrued_to = self._closed_by_restart.pop(worker_id, None)
        self._sessions[worker_id] = ws
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

    def worker_slept(self, worker_id: str, at: datetime, asleep: bool = True) -> None:
        """The worker fell asleep at `at` (or woke, `asleep` False): its time so far is
        billed as it was, the time from here on at the other rate."""
        ws = self._sessions.get(worker_id)
        if ws is None or ws.stopped_at is not None or (ws.asleep_at is not None) == asleep:
            return
        self._accrue_session(ws, at)
        ws.asleep_at = at if asleep else None
        self._dirty_sessions.add(worker_id)

    def worker_stopped(self, worker_id: str, at: datetime, reason: str | None) -> None:
        session = self._sessions.get(worker_id)
        if session is None or session.stopped_at is not None:
            return
        session.stopped_at, session.reason = at, reason
        self._accrue_session(session, at)
        self._dirty_sessions.add(worker_id)

    def accrue(self, now: datetime) -> None:
        """Bill every open session up to `now`: GPU time per key and for the deployment,
        added to month-to-date spend at once (deployment budgets include it)."""
        self._accrued_at = now
        for ws in list(self._sessions.values()):
            if ws.stopped_at is None:
                self._accrue_session(ws, now)
                self._dirty_sessions.add(ws.worker_id)

    def _accrue_session(self, ws: WorkerSession, end: datetime) -> None:
        begin = ws.accrued_to or ws.started_at
        if end <= begin:
            return
        part = split_interval(begin, end, ws.started_at, ws.ready_at, ws.busy.take(end))
        ws.accrued_to = end
        gpus, rate, hour = ws.gpu_count, ws.hourly_rate, hour_of(end)
        if ws.asleep_at is not None:  # asleep all along: accrued when it fell asleep
            ws.sleeping_s += part.total_s
            nusd = nano_usd(part.total_s * gpus, ws.sleeping_rate)
            secs = part.total_s * gpus
            self._gpu.append(GpuDelta(hour, ws.deployment, "", gpu_seconds=secs,
                                      idle_gpu_seconds=secs, sleeping_gpu_seconds=secs,
                                      cost_nusd=nusd))  # fmt: skip
            self._add_gpu_spend(ws.deployment, None, nusd / NANO)
            self.metrics.observe_worker_cost(ws.deployment, nusd / NANO)
            return
        total_nusd = 0
        for key_id, seconds in part.busy_s.items():
            nusd = nano_usd(seconds * gpus, rate)
            total_nusd += nusd
            self._gpu.append(
                GpuDelta(hour, ws.deployment, key_id, gpu_seconds=seconds * gpus, cost_nusd=nusd)
            )
            self._add_gpu_spend(ws.deployment, key_id, nusd / NANO)
        own = (part.idle_s + part.startup_s) * gpus
        own_nusd = nano_usd(own, rate)
        total_nusd += own_nusd
        self._gpu.append(
            GpuDelta(
                hour,
                ws.deployment,
                "",
                gpu_seconds=own,
                idle_gpu_seconds=part.idle_s * gpus,
                startup_gpu_seconds=part.startup_s * gpus,
                cost_nusd=own_nusd,
            )
        )
        self._add_gpu_spend(ws.deployment, None, own_nusd / NANO)
        self.metrics.observe_worker_cost(ws.deployment, total_nusd / NANO)

    # -- flushing -------------------------------------------------------------------------

    def unflushed(self) -> tuple[int, list[RequestUsage], list[GpuDelta]]:
        """Usage not yet committed to the store (for reads, which never write), with the
        count of flushes so far: a read that saw it change while it ran reads again."""
        events, gpu = self._flushing
        return self.flushes, [*events, *self._events], [*gpu, *self._gpu]

    async def read(self, query: Callable[[list[RequestUsage], list[GpuDelta]], Awaitable[T]]) -> T:
        """Run a read with the usage not yet flushed merged in (reads never write). A flush
        that committed while it ran could count some twice or miss them: read again."""
        for _ in range(READ_TRIES - 1):
            seen, events, gpu = self.unflushed()
            result = await query(events, gpu)
            if self.flushes == seen:
                return result
        async with self._flush_lock:  # rare: hold flushes off for one last read
            _, events, gpu = self.unflushed()
            return await query(events, gpu)

    async def flush(self) -> None:
        async with self._flush_lock:
            events, self._events = self._events, []
            gpu, self._gpu = self._gpu, []
            dirty, self._dirty_sessions = self._dirty_sessions, set()
            sessions = [self._sessions[w] for w in dirty if w in self._sessions]
            if not events and not sessions and not gpu:
                return
            self._flushing = (events, gpu)
            try:
                async with AsyncSession(self.store.engine) as s, s.begin():
                    # Executemany of plain rows, in slices: preparing the parameters runs on
                    # the event loop, and one slice must not stall requests for long.
                    for at in range(0, len(events), FLUSH_SLICE):
                        rows = [writes.event_values(e) for e in events[at : at + FLUSH_SLICE]]
                        await s.execute(insert(writes.EVENTS_TABLE), rows)
                    if events:
                        await writes.add_rollups(s, events)
                    if gpu:
                        await writes.add_gpu(s, gpu)
                    for ws in sessions:
                        await s.merge(writes.session_row(ws))
            except Exception:
                # Keep them for the next flush rather than lose them.
                self._events[:0] = events
                self._gpu[:0] = gpu
                self._dirty_sessions |= dirty
                raise
            finally:
                self._flushing = ([], [])
                self.flushes += 1
            for ws in sessions:
                if ws.stopped_at is not None:
                    self._sessions.pop(ws.worker_id, None)

    async def sample_storage(self) -> None:
        now = self.clock()
        since = self._storage_sampled_at
        self._storage_sampled_at = now
        dirs = self.storage_dirs()
        sizes = await asyncio.to_thread(lambda: {d: writes.dir_bytes(p) for d, p in dirs.items()})
        if since is None:
            since = now
        seconds = (now - since).total_seconds()
        costs: dict[str, int] = {}
        async with AsyncSession(self.store.engine) as s, s.begin():
            for dep, size in sizes.items():
                gb = size / 1e9
                gb_s = gb * seconds
                nusd = costs[dep] = self.prices_for(dep).storage_nusd(gb_s)
                self.metrics.observe_storage(dep, gb, nusd / NANO)
                await writes.upsert_add(
                    s,
                    StorageHourlyRow,
                    {"hour": hour_of(now), "deployment": dep},
                    {"gb_seconds": gb_s, "cost_nusd": nusd},
                    {"last_gb": gb},
                )
        for dep, nusd in costs.items():  # committed: now it counts against budgets
            self._add_dep_usd(dep, nusd / NANO)

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
            self._month = new_month(now)

    def _add_spend(self, key_id: str, deployment: str, tokens: int, cost: float) -> None:
        for table, name in ((self._month.by_key, key_id), (self._month.by_deployment, deployment)):
            old = table.get(name, Spent())
            table[name] = Spent(old.usd + cost, old.tokens + tokens)

    def _add_dep_usd(self, deployment: str, usd: float) -> None:
        old = self._month.by_deployment.get(deployment, Spent())
        self._month.by_deployment[deployment] = Spent(old.usd + usd, old.tokens)

    def _add_gpu_spend(self, deployment: str, key_id: str | None, usd: float) -> None:
        self._add_dep_usd(deployment, usd)
        if key_id:
            self._month.gpu_by_key[key_id] = self._month.gpu_by_key.get(key_id, 0.0) + usd


def _nothing() -> None:
    return None


_NONE_SPENT = Spent()


def _plus(a: Spent | None, b: Spent | None) -> Spent:
    a, b = a or Spent(), b or Spent()
    return Spent(a.usd + b.usd, a.tokens + b.tokens)
