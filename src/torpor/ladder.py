"""Pure decisions of the sleep/wake ladder, GPU residency and warm-up schedules.

The ladder, per worker: `healthy` → (idle `sleep_after_s`) → `sleeping` → (idle
`idle_timeout_s`, counted from its last request) → `stopped`; demand wakes a sleeping
worker before any new one is started. Workers up to the awake target (min_workers, raised
by schedule windows, plus `buffer_workers` above demand) are kept awake.

Residency: when a deployment needs devices and none is free, evict sleeping workers first,
then idle healthy workers above their deployment's min_workers, lowest priority first, least
recently used first; never a worker with requests in flight.

Everything here is a function of (snapshot, policy, now): no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from croniter import croniter

from torpor.states import WorkerState

# Sleeping workers are woken this long before a schedule window opens.
PREWAKE_LEAD_S = 30.0
# Predictive pre-warm ("history"): how many past weeks are looked at, how many of them
# must have had their first request of the day in the same hour of the week, and how
# long before that hour the deployment is woken.
HISTORY_WEEKS = 4
HISTORY_MIN_WEEKS = 2
HISTORY_LEAD_S = 120.0
WEEK_S = 7 * 24 * 3600.0


def cron_valid(expr: str) -> bool:
    """A cron expression of five fields, or six with seconds last."""
    return len(expr.split()) in (5, 6) and bool(croniter.is_valid(expr))


# -- schedule windows ----------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    cron: str
    duration_s: float
    min_workers: int


@dataclass(frozen=True)
class ScheduleState:
    # min_workers raised by the windows open now (0 when none is).
    min_workers: int = 0
    # Workers to have awake because a window opens within the pre-wake lead.
    prewake: int = 0
    # The next instant this state changes by itself (a window opens, closes or its lead
    # starts), for the loop's timer.
    next_change: datetime | None = None


def schedule_state(
    windows: Sequence[Window], at: datetime, lead_s: float = PREWAKE_LEAD_S
) -> ScheduleState:
    """Which windows are open at `at` (a timezone-aware UTC datetime) and which open soon."""
    low, prewake = 0, 0
    changes: list[datetime] = []
    for w in windows:
        # The latest start at or before `at` (croniter's get_prev is strict).
        start: datetime = croniter(w.cron, at + timedelta(microseconds=1)).get_prev(datetime)
        end = start + timedelta(seconds=w.duration_s)
        if start <= at < end:
            low = max(low, w.min_workers)
            changes.append(end)
        upcoming: datetime = croniter(w.cron, at).get_next(datetime)
        lead_at = upcoming - timedelta(seconds=lead_s)
        if lead_at <= at:
            prewake = max(prewake, w.min_workers)
            changes.append(upcoming)
        else:
            changes.append(lead_at)
    return ScheduleState(low, max(prewake, low), min(changes) if changes else None)


def history_prewake(
    first_requests: Sequence[datetime], at: datetime, lead_s: float = HISTORY_LEAD_S
) -> bool:
    """Predictive pre-warm: True when `at + lead_s` falls in an hour of the week in which,
    in at least HISTORY_MIN_WEEKS of the last HISTORY_WEEKS weeks, a burst began.
    `first_requests`: when each burst began (a first request after a quiet period)."""
    ahead = at + timedelta(seconds=lead_s)
    slot = (ahead.weekday(), ahead.hour)
    weeks = set()
    for t in first_requests:
        if (t.weekday(), t.hour) != slot or t > at:
            continue
        back = round((ahead - t).total_seconds() / WEEK_S)
        if 1 <= back <= HISTORY_WEEKS:
            weeks.add(back)
    return len(weeks) >= HISTORY_MIN_WEEKS


def burst_starts(active_hours: Sequence[datetime]) -> list[datetime]:
    """The hours in which a burst began: hours with requests whose previous hour had none
    (`active_hours`: the starts of the hours with at least one request)."""
    hours = sorted(set(active_hours))
    seen = set(hours)
    return [h for h in hours if h - timedelta(hours=1) not in seen]


def history_next_check(at: datetime, lead_s: float = HISTORY_LEAD_S) -> datetime:
    """The next instant `history_prewake` can change its answer: when `at + lead_s` enters
    the next hour."""
    ahead = at + timedelta(seconds=lead_s)
    next_hour = ahead.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return next_hour - timedelta(seconds=lead_s)


# -- the ladder ------------------------------------------------------------------------------


class Transition(StrEnum):
    NONE = "none"
    # A sleep call in flight (the worker is already `sleeping` and out of routing).
    TO_SLEEP = "to_sleep"
    # A wake call in flight (still `sleeping` until it is done).
    TO_WAKE = "to_wake"


@dataclass(frozen=True)
class LadderWorker:
    id: str
    state: WorkerState
    inflight: int
    # When it last finished a request (or became ready, or woke); None while starting.
    idle_since: float | None
    # Whether this worker can sleep at all (its engine and runtime allow it).
    can_sleep: bool
    transition: Transition = Transition.NONE
    # A worker of an older spec version.
    outdated: bool = False


@dataclass(frozen=True)
class LadderPolicy:
    sleep_after_s: float | None
    idle_timeout_s: float
    # Workers to keep awake now (see awake_target).
    awake: int


@dataclass(frozen=True)
class LadderPlan:
    sleep: tuple[str, ...] = ()
    wake: tuple[str, ...] = ()
    stop: tuple[tuple[str, str], ...] = ()
    wake_at: float | None = None


def awake_target(
    demand: int, concurrency: int, min_workers: int, max_workers: int, buffer_workers: int = 0
) -> int:
    """clamp(ceil(demand / concurrency) + buffer_workers, min_workers, max_workers)."""
    wanted = (math.ceil(demand / concurrency) if demand > 0 else 0) + buffer_workers
    return max(min_workers, min(max_workers, wanted))


def plan_ladder(workers: Sequence[LadderWorker], policy: LadderPolicy, now: float) -> LadderPlan:
    """Which workers go to sleep, which wake, which sleeping ones stop."""
    current = [w for w in workers if not w.outdated]
    awake = [
        w
        for w in current
        if w.state in (WorkerState.PROVISIONING, WorkerState.HEALTHY)
        or w.transition is Transition.TO_WAKE
    ]
    asleep = [
        w
        for w in current
        if w.state is WorkerState.SLEEPING and w.transition is not Transition.TO_WAKE
    ]
    stop: list[tuple[str, str]] = [
        (w.id, "spec changed")
        for w in workers
        if w.outdated and w.state is WorkerState.SLEEPING and w.transition is Transition.NONE
    ]
    wake: list[str] = []
    sleep: list[str] = []
    wake_at: float | None = None

    def later(at: float) -> None:
        nonlocal wake_at
        wake_at = at if wake_at is None else min(wake_at, at)

    need = policy.awake - len(awake)
    if need > 0:
        # Most recently used first (warmest caches); a worker still going to sleep last.
        order = sorted(
            asleep,
            key=lambda w: (w.transition is Transition.TO_SLEEP, -(w.idle_since or 0.0)),
        )
        wake = [w.id for w in order[:need]]
    elif need < 0 and policy.sleep_after_s is not None:
        idle = sorted(
            (
                w
                for w in awake
                if w.state is WorkerState.HEALTHY
                and w.transition is Transition.NONE
                and w.inflight == 0
                and w.idle_since is not None
                and w.can_sleep
            ),
            key=lambda w: w.idle_since or 0.0,
        )
        surplus = -need
        for w in idle:
            if surplus <= 0:
                break
            at = (w.idle_since or 0.0) + policy.sleep_after_s
            if now >= at:
                sleep.append(w.id)
                surplus -= 1
            else:
                later(at)
    for w in asleep:
        if w.id in wake or w.transition is not Transition.NONE:
            continue
        at = (w.idle_since or 0.0) + policy.idle_timeout_s
        if now >= at:
            stop.append((w.id, "idle"))
        else:
            later(at)
    return LadderPlan(tuple(sleep), tuple(wake), tuple(stop), wake_at)


# -- GPU residency ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Resident:
    """A worker holding devices the starving deployment could use."""

    worker_id: str
    deployment: str
    state: WorkerState
    inflight: int
    priority: int
    idle_since: float | None
    # Devices it holds that fit the starving deployment.
    devices: int
    # How many workers its deployment has above min_workers.
    spare: int


def pick_evictions(
    residents: Sequence[Resident], needed: int, priority: int, deployment: str
) -> tuple[str, ...]:
    """Workers to stop so that `needed` fitting devices come free for `deployment` (of
    `priority`): sleeping ones first, then idle healthy ones of no higher priority; lowest
    priority first, least recently used first. Nothing when even all of them would not free
    enough (evicting then would only hurt)."""
    if needed <= 0:
        return ()
    usable = [
        r
        for r in residents
        if r.deployment != deployment
        and r.devices > 0
        and r.inflight == 0
        and (
            r.state is WorkerState.SLEEPING
            or (r.state is WorkerState.HEALTHY and r.priority <= priority)
        )
    ]
    usable.sort(
        key=lambda r: (r.state is not WorkerState.SLEEPING, r.priority, r.idle_since or 0.0)
    )
    chosen: list[str] = []
    taken: dict[str, int] = {}
    freed = 0
    for r in usable:
        if freed >= needed:
            break
        if taken.get(r.deployment, 0) >= r.spare:
            continue  # never below its deployment's min_workers
        taken[r.deployment] = taken.get(r.deployment, 0) + 1
        chosen.append(r.worker_id)
        freed += r.devices
    return tuple(chosen) if freed >= needed else ()
