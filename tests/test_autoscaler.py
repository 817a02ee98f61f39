"""The pure scaling decisions: desired counts, scale from/to zero, backoff and rollouts."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from torpor.autoscaler import (
    ScalingPlan,
    ScalingView,
    WorkerView,
    desired_workers,
    plan_scaling,
    restart_backoff,
)
from torpor.states import WorkerState

H = WorkerState.HEALTHY
P = WorkerState.PROVISIONING
D = WorkerState.DRAINING


def view(*workers: WorkerView, **fields: object) -> ScalingView:
    base: dict[str, object] = {
        "spec_version": 1,
        "min_workers": 0,
        "max_workers": 4,
        "concurrency": 2,
        "idle_timeout_s": 60.0,
        "demand": 0,
        "workers": tuple(workers),
    }
    base.update(fields)
    return ScalingView(**base)  # type: ignore[arg-type]


def worker(
    id: str,
    state: WorkerState = H,
    *,
    version: int = 1,
    inflight: int = 0,
    idle_since: float | None = 0.0,
) -> WorkerView:
    if state is P:
        idle_since = None
    return WorkerView(id, state, version, inflight, idle_since)


# -- desired_workers ---------------------------------------------------------------------


def test_desired_is_ceil_of_demand_over_concurrency() -> None:
    assert desired_workers(5, 2, 0, 10) == 3
    assert desired_workers(4, 2, 0, 10) == 2
    assert desired_workers(1, 4, 0, 10) == 1


def test_desired_is_capped_by_max_and_raised_to_min() -> None:
    assert desired_workers(5, 2, 0, 2) == 2
    assert desired_workers(0, 2, 1, 3) == 1
    assert desired_workers(0, 2, 0, 3) == 0


@given(
    demand=st.integers(0, 1000),
    concurrency=st.integers(1, 64),
    min_workers=st.integers(0, 20),
    extra=st.integers(0, 20),
)
def test_desired_stays_within_bounds(
    demand: int, concurrency: int, min_workers: int, extra: int
) -> None:
    max_workers = max(1, min_workers + extra)
    got = desired_workers(demand, concurrency, min_workers, max_workers)
    assert min_workers <= got <= max_workers
    needed = math.ceil(demand / concurrency)
    if needed <= max_workers:
        assert got >= needed


# -- scaling up ----------------------------------------------------------------------------


def test_scale_from_zero_on_first_request() -> None:
    plan = plan_scaling(view(demand=1), now=0.0)
    assert plan.start == 1
    assert plan.desired == 1
    assert plan.stop == ()


def test_no_demand_and_no_min_starts_nothing() -> None:
    assert plan_scaling(view(), now=0.0) == ScalingPlan()


def test_start_count_follows_ceil_and_is_capped_by_max() -> None:
    assert plan_scaling(view(demand=5, concurrency=2, max_workers=10), 0.0).start == 3
    assert plan_scaling(view(demand=5, concurrency=2, max_workers=2), 0.0).start == 2


def test_min_workers_kept_without_demand() -> None:
    assert plan_scaling(view(min_workers=2), now=0.0).start == 2
    plan = plan_scaling(view(worker("a"), worker("b"), min_workers=2), now=1000.0)
    assert plan.start == 0
    assert plan.stop == ()


def test_provisioning_workers_count_toward_capacity() -> None:
    plan = plan_scaling(view(worker("a", P), demand=2, concurrency=2), now=0.0)
    assert plan.start == 0
    plan = plan_scaling(view(worker("a", P), demand=3, concurrency=2), now=0.0)
    assert plan.start == 1


# -- restart backoff -----------------------------------------------------------------------


def test_backoff_delays_a_start_and_sets_wake_at() -> None:
    plan = plan_scaling(view(demand=1, start_not_before=10.0), now=5.0)
    assert plan.start == 0
    assert plan.wake_at == 10.0


def test_start_allowed_once_backoff_is_over() -> None:
    plan = plan_scaling(view(demand=1, start_not_before=10.0), now=10.0)
    assert plan.start == 1
    assert plan.wake_at is None


def test_restart_backoff_doubles_and_is_capped() -> None:
    assert restart_backoff(0, 1.0, 30.0) == 0.0
    assert restart_backoff(1, 1.0, 30.0) == 1.0
    assert restart_backoff(2, 1.0, 30.0) == 2.0
    assert restart_backoff(3, 1.0, 30.0) == 4.0
    assert restart_backoff(10, 1.0, 30.0) == 30.0


# -- scaling down --------------------------------------------------------------------------


def test_no_scale_down_before_idle_timeout() -> None:
    v = view(worker("a", idle_since=100.0), idle_timeout_s=60.0)
    plan = plan_scaling(v, now=150.0)
    assert plan.stop == ()
    assert plan.wake_at == 160.0


def test_scale_down_after_idle_timeout() -> None:
    v = view(worker("a", idle_since=100.0), idle_timeout_s=60.0)
    plan = plan_scaling(v, now=160.0)
    assert plan.stop == (("a", "idle"),)
    assert plan.wake_at is None


def test_scale_down_never_below_min_workers() -> None:
    workers = [worker(w, idle_since=0.0) for w in "abc"]
    plan = plan_scaling(view(*workers, min_workers=2), now=1000.0)
    assert len(plan.stop) == 1
    # The longest idle goes first.
    workers = [worker("a", idle_since=50.0), worker("b", idle_since=10.0), worker("c")]
    plan = plan_scaling(view(*workers, min_workers=2), now=1000.0)
    assert plan.stop == (("c", "idle"),)


def test_scale_down_never_stops_a_busy_worker() -> None:
    v = view(
        worker("busy", inflight=1, idle_since=None),
        worker("idle", idle_since=0.0),
        demand=1,
        concurrency=2,
    )
    plan = plan_scaling(v, now=1000.0)
    assert plan.stop == (("idle", "idle"),)
    v = view(worker("busy", inflight=1, idle_since=None), demand=0)
    assert plan_scaling(v, now=1000.0).stop == ()


def test_workers_needed_for_demand_are_not_reaped() -> None:
    v = view(worker("a"), worker("b"), demand=3, concurrency=2)
    assert plan_scaling(v, now=1000.0).stop == ()


# -- rolling update ------------------------------------------------------------------------


def test_rollout_starts_new_worker_before_draining() -> None:
    old = worker("old", version=1)
    plan = plan_scaling(view(old, spec_version=2), now=0.0)
    assert plan.start == 1
    assert plan.drain == ()
    assert plan.stop == ()


def test_rollout_does_not_drain_while_new_worker_provisions() -> None:
    v = view(worker("old", version=1), worker("new", P, version=2), spec_version=2)
    plan = plan_scaling(v, now=0.0)
    assert plan.start == 0
    assert plan.drain == ()
    assert plan.stop == ()


def test_rollout_drains_old_worker_once_new_is_healthy() -> None:
    v = view(worker("old", version=1), worker("new", version=2), spec_version=2)
    plan = plan_scaling(v, now=0.0)
    assert plan.drain == ("old",)
    assert plan.start == 0
    assert plan.stop == ()


def test_rollout_with_max_workers_one_surges_one() -> None:
    v = view(worker("old", version=1), spec_version=2, min_workers=1, max_workers=1)
    assert plan_scaling(v, now=0.0).start == 1


def test_rollout_replaces_outdated_workers_one_for_one() -> None:
    olds = [worker(f"old{i}", version=1) for i in range(3)]
    plan = plan_scaling(view(*olds, spec_version=2), now=0.0)
    assert plan.start == 3
    assert plan.drain == ()

    news = [worker("new0", version=2), worker("new1", P, version=2), worker("new2", P, version=2)]
    plan = plan_scaling(view(*olds, *news, spec_version=2), now=0.0)
    assert plan.start == 0
    assert plan.drain == ("old0",)

    news = [worker(f"new{i}", version=2) for i in range(3)]
    plan = plan_scaling(view(*olds, *news, spec_version=2), now=0.0)
    assert sorted(plan.drain) == ["old0", "old1", "old2"]


def test_outdated_provisioning_worker_is_stopped() -> None:
    plan = plan_scaling(view(worker("old", P, version=1), demand=1, spec_version=2), now=0.0)
    assert plan.stop == (("old", "spec changed"),)
    assert plan.start == 1


def test_finish_drain_only_when_no_request_is_left() -> None:
    v = view(
        worker("done", D, version=1, inflight=0),
        worker("busy", D, version=1, inflight=2),
        worker("new", version=2),
        spec_version=2,
    )
    plan = plan_scaling(v, now=0.0)
    assert plan.finish_drain == ("done",)
    assert plan.stop == ()


def test_no_idle_reap_while_a_rollout_is_under_way() -> None:
    v = view(
        worker("old", version=1),
        worker("new0", version=2, idle_since=0.0),
        worker("new1", version=2, idle_since=0.0),
        spec_version=2,
    )
    plan = plan_scaling(v, now=1000.0)
    assert plan.stop == ()
    assert plan.drain == ("old",)


# -- properties ----------------------------------------------------------------------------


@st.composite
def worker_views(draw: st.DrawFn, index: int) -> WorkerView:
    state = draw(st.sampled_from([P, H, D]))
    version = draw(st.integers(1, 2))
    if state is P:
        # A starting worker is not routable, so it never holds a request.
        return WorkerView(f"w{index}", state, version, 0, None)
    inflight = draw(st.integers(0, 3))
    idle_since = None if inflight else draw(st.floats(0, 200))
    return WorkerView(f"w{index}", state, version, inflight, idle_since)


@st.composite
def scaling_views(draw: st.DrawFn) -> ScalingView:
    n = draw(st.integers(0, 6))
    workers = tuple(draw(worker_views(i)) for i in range(n))
    min_workers = draw(st.integers(0, 3))
    return ScalingView(
        spec_version=2,
        min_workers=min_workers,
        max_workers=min_workers + draw(st.integers(0, 3)) or 1,
        concurrency=draw(st.integers(1, 4)),
        idle_timeout_s=draw(st.floats(0, 100)),
        demand=draw(st.integers(0, 12)),
        workers=workers,
        start_not_before=draw(st.floats(0, 200)),
    )


@given(v=scaling_views(), now=st.floats(0, 400))
def test_plan_never_stops_busy_workers_nor_goes_below_min(v: ScalingView, now: float) -> None:
    plan = plan_scaling(v, now)
    by_id = {w.id: w for w in v.workers}
    stopped = {wid for wid, _ in plan.stop}
    assert all(by_id[wid].inflight == 0 for wid in stopped)
    assert all(by_id[wid].inflight == 0 for wid in plan.finish_drain)

    current = [w for w in v.workers if w.spec_version == v.spec_version and w.state in (P, H)]
    left = [w for w in current if w.id not in stopped]
    assert len(left) >= min(v.min_workers, len(current))
    if now >= v.start_not_before:
        assert len(left) + plan.start >= v.min_workers
    else:
        assert plan.start == 0
