"""Pure scaling decisions: a function of (snapshot, now) with no clock and no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torpor.states import WorkerState


def desired_workers(demand: int, concurrency: int, min_workers: int, max_workers: int) -> int:
    """clamp(ceil(demand / concurrency), min_workers, max_workers)."""
    wanted = math.ceil(demand / concurrency) if demand > 0 else 0
    return max(min_workers, min(max_workers, wanted))


@dataclass(frozen=True)
class WorkerView:
    id: str
    state: WorkerState
    spec_version: int
    inflight: int
    # When the worker last finished a request (or became ready); None while provisioning.
    idle_since: float | None
    # Started but not placed: waiting for capacity on the cluster.
    pending: bool = False


@dataclass(frozen=True)
class ScalingView:
    """What the autoscaler needs to know about one deployment at one instant."""

    spec_version: int
    min_workers: int
    max_workers: int
    concurrency: int
    idle_timeout_s: float
    # Requests holding a slot plus requests waiting in the queue.
    demand: int
    workers: tuple[WorkerView, ...]
    # Earliest time a replacement may start after failures (restart backoff).
    start_not_before: float = 0.0
    # New workers that can be placed now (free devices); None where nothing says so (the
    # runtime queues starts for capacity, or the workers need no device).
    capacity: int | None = None


@dataclass(frozen=True)
class ScalingPlan:
    start: int = 0
    # (worker id, reason) to stop at once: idle reaps and obsolete starting workers.
    stop: tuple[tuple[str, str], ...] = ()
    # Outdated workers to take out of routing; they stop when their requests finish.
    drain: tuple[str, ...] = ()
    # Drained workers whose last request finished.
    finish_drain: tuple[str, ...] = ()
    # When the plan would change by itself (idle deadline or backoff end), for the loop's timer.
    wake_at: float | None = None
    desired: int = 0
    # Starts wanted that no capacity is free for.
    short: int = 0
    notes: tuple[str, ...] = field(default=())


def plan_scaling(view: ScalingView, now: float) -> ScalingPlan:
    """Decide starts, stops and drains for one deployment.

    Rollout: workers of an older spec version keep serving until a new-version worker is
    ready, then drain one for one (surge of up to one worker per outdated worker). With no
    capacity for a surge, replace in place: drain one outdated worker, start its successor
    when its devices are free, and drain the next only once that successor is ready.
    Scale-down: only workers idle for idle_timeout_s, never below the desired count.
    """
    desired = desired_workers(view.demand, view.concurrency, view.min_workers, view.max_workers)
    live = [w for w in view.workers if w.state in (WorkerState.PROVISIONING, WorkerState.HEALTHY)]
    current = [w for w in live if w.spec_version == view.spec_version]
    outdated = [w for w in live if w.spec_version != view.spec_version]
    outdated_ready = [w for w in outdated if w.state is WorkerState.HEALTHY]
    current_ready = [w for w in current if w.state is WorkerState.HEALTHY]

    stop: list[tuple[str, str]] = []
    drain: list[str] = []
    wake_at: float | None = None

    # An outdated worker that is still starting will never serve: replace it now.
    stop.extend((w.id, "spec changed") for w in outdated if w.state is WorkerState.PROVISIONING)

    # Each outdated ready worker is replaced before it goes, so capacity never dips.
    target = max(desired, len(outdated_ready))
    start = max(0, target - len(current))
    if start and now < view.start_not_before:
        start = 0
        wake_at = view.start_not_before

    excess_ready = len(current_ready) + len(outdated_ready) - target
    for w in outdated_ready[: max(0, excess_ready)]:
        drain.append(w.id)

    short = 0
    if view.capacity is not None and start > view.capacity:
        short = start - view.capacity
        start = view.capacity
        draining = any(w.state is WorkerState.DRAINING for w in view.workers)
        starting = any(w.state is WorkerState.PROVISIONING for w in current)
        spare = [w for w in outdated_ready if w.id not in drain]
        if spare and not (draining or starting or start or drain):
            # Replace in place: the least busy outdated worker makes room for its successor.
            drain.append(min(spare, key=lambda w: w.inflight).id)

    # Starting workers still waiting for capacity beyond what is wanted are not needed.
    waiting = [w for w in current if w.state is WorkerState.PROVISIONING and w.pending]
    unneeded = waiting[: max(0, len(current) - target)]
    stop.extend((w.id, "no longer needed") for w in unneeded)

    finish_drain = tuple(
        w.id for w in view.workers if w.state is WorkerState.DRAINING and w.inflight == 0
    )

    # Idle reap: beyond the desired count, stop workers idle for idle_timeout_s.
    surplus = len(current) - max(desired, view.min_workers) - len(unneeded)
    if surplus > 0 and not outdated_ready:
        idle = sorted(
            (w for w in current_ready if w.inflight == 0 and w.idle_since is not None),
            key=lambda w: w.idle_since or 0.0,
        )
        for w in idle:
            if surplus <= 0:
                break
            deadline = (w.idle_since or 0.0) + view.idle_timeout_s
            if now >= deadline:
                stop.append((w.id, "idle"))
                surplus -= 1
            else:
                wake_at = deadline if wake_at is None else min(wake_at, deadline)

    return ScalingPlan(
        start=start,
        stop=tuple(stop),
        drain=tuple(drain),
        finish_drain=finish_drain,
        wake_at=wake_at,
        desired=desired,
        short=short,
    )


def restart_backoff(failures: int, base_s: float, max_s: float) -> float:
    """Delay before the next replacement after `failures` consecutive worker failures."""
    if failures <= 0:
        return 0.0
    return float(min(max_s, base_s * (2 ** (failures - 1))))
