"""Pure decisions without processes: the setup pipeline, worker health, and the
autoscaler's replace-in-place rollout when no device is free."""

from __future__ import annotations

from torpor.autoscaler import ScalingView, WorkerView, plan_scaling
from torpor.health import HealthView, Verdict, crash_looping, judge
from torpor.pipeline import JobState, SetupFacts, plan_setup
from torpor.runtime.base import ProbeResult
from torpor.states import SetupState, WorkerState

S = SetupState
W = WorkerState


def test_setup_starts_its_job_once() -> None:
    assert plan_setup(SetupFacts(S.STARTING, JobState.NONE)).start_job
    running = plan_setup(SetupFacts(S.STARTING, JobState.RUNNING))
    assert not running.start_job and running.transitions == ()


def test_setup_walks_the_pipeline_as_the_job_reports() -> None:
    fs = plan_setup(SetupFacts(S.STARTING, JobState.FS_READY))
    assert fs.transitions == (S.FILESYSTEM_CREATED, S.DOWNLOADING_MODEL)
    done = plan_setup(SetupFacts(S.DOWNLOADING_MODEL, JobState.DONE))
    assert done.transitions == (S.MODEL_DOWNLOADED, S.RUNNING)
    # A fast job can be done before the loop saw its first report.
    assert plan_setup(SetupFacts(S.STARTING, JobState.DONE)).transitions == (
        S.FILESYSTEM_CREATED,
        S.DOWNLOADING_MODEL,
        S.MODEL_DOWNLOADED,
        S.RUNNING,
    )


def test_setup_failure_carries_the_reason() -> None:
    plan = plan_setup(SetupFacts(S.DOWNLOADING_MODEL, JobState.FAILED, "disk full"))
    assert plan.transitions == (S.FAILED,) and plan.reason == "disk full"


def test_setup_does_nothing_outside_the_pipeline() -> None:
    for state in (S.RUNNING, S.FAILED, S.DELETING, S.CLEANING, S.DELETED):
        assert plan_setup(SetupFacts(state, JobState.DONE)) == plan_setup(
            SetupFacts(state, JobState.FAILED, "x")
        )
        assert plan_setup(SetupFacts(state, JobState.DONE)).transitions == ()


def hv(state: WorkerState = W.PROVISIONING, **kw: object) -> HealthView:
    return HealthView("w", state, 0.0, **kw)  # type: ignore[arg-type]


def test_health_ready_pending_timeout() -> None:
    assert judge(hv(probe=ProbeResult(None, True)), 1.0, 10).verdict is Verdict.READY
    pending = judge(hv(probe=ProbeResult(None, False, "waiting", pending=True)), 99.0, 10)
    assert pending.verdict is Verdict.PENDING and pending.reason == "waiting"
    late = judge(hv(probe=ProbeResult(None, False)), 11.0, 10)
    assert late.verdict is Verdict.TIMED_OUT
    # A start still under way (no probe yet) times out too.
    assert judge(hv(), 11.0, 10).verdict is Verdict.TIMED_OUT
    assert judge(hv(), 9.0, 10).verdict is Verdict.UNCHANGED


def test_health_exit_and_node_loss() -> None:
    died = judge(hv(W.HEALTHY, exit_code=3, ended=True), 1.0, 10)
    assert died.verdict is Verdict.FAILED and died.exit_code == 3
    assert died.reason == "exited with code 3 unexpectedly"
    lost = judge(hv(W.HEALTHY, exit_code=-1, exit_reason="node lost", ended=True), 1.0, 10)
    assert lost.verdict is Verdict.FAILED and lost.reason == "node lost"
    early = judge(hv(probe=ProbeResult(1, False)), 1.0, 10)
    assert early.reason == "exited with code 1 before it was ready"
    assert judge(hv(W.HEALTHY), 1.0, 10).verdict is Verdict.UNCHANGED


def test_crash_loop_threshold() -> None:
    assert not crash_looping(2, 3) and crash_looping(3, 3)


def wv(i: str, state: WorkerState, version: int, inflight: int = 0, **kw: object) -> WorkerView:
    return WorkerView(i, state, version, inflight, 0.0, **kw)  # type: ignore[arg-type]


def view(workers: tuple[WorkerView, ...], capacity: int | None, **kw: object) -> ScalingView:
    base: dict[str, object] = dict(
        spec_version=2,
        min_workers=2,
        max_workers=2,
        concurrency=1,
        idle_timeout_s=60,
        demand=0,
        workers=workers,
        capacity=capacity,
    )
    base.update(kw)
    return ScalingView(**base)  # type: ignore[arg-type]


def test_rollout_surges_when_a_device_is_free() -> None:
    plan = plan_scaling(view((wv("a", W.HEALTHY, 1), wv("b", W.HEALTHY, 1)), capacity=1), 0)
    assert plan.start == 1 and plan.drain == () and plan.short == 1


def test_rollout_on_a_full_host_drains_the_least_busy_old_worker_first() -> None:
    plan = plan_scaling(
        view((wv("a", W.HEALTHY, 1, inflight=2), wv("b", W.HEALTHY, 1)), capacity=0), 0
    )
    assert plan.start == 0 and plan.drain == ("b",) and plan.short == 2


def test_replace_in_place_waits_for_the_successor_before_the_next_drain() -> None:
    draining = (wv("a", W.HEALTHY, 1), wv("b", W.DRAINING, 1))
    assert plan_scaling(view(draining, capacity=0), 0).drain == ()
    starting = (wv("a", W.HEALTHY, 1), wv("c", W.PROVISIONING, 2))
    assert plan_scaling(view(starting, capacity=0), 0).drain == ()
    # Freed devices: the successor starts, and nothing else is drained in the same cycle.
    freed = plan_scaling(view((wv("a", W.HEALTHY, 1),), capacity=1), 0)
    assert freed.start == 1 and freed.drain == ()
    ready = (wv("a", W.HEALTHY, 1), wv("c", W.HEALTHY, 2))
    assert plan_scaling(view(ready, capacity=0), 0).drain == ("a",)


def test_starting_workers_waiting_for_capacity_are_stopped_when_not_needed() -> None:
    waiting = (wv("p", W.PROVISIONING, 2, pending=True),)
    plan = plan_scaling(view(waiting, None, min_workers=0, max_workers=1), 0)
    assert plan.stop == (("p", "no longer needed"),)
    wanted = plan_scaling(view(waiting, None, min_workers=0, max_workers=1, demand=1), 0)
    assert wanted.stop == ()
