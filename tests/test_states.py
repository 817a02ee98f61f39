"""Transition tables and the derived serving status."""

from __future__ import annotations

import pytest

from torpor.states import (
    SETUP_TRANSITIONS,
    WORKER_TRANSITIONS,
    InvalidTransition,
    ServingStatus,
    SetupState,
    WorkerState,
    check_setup,
    check_worker,
    serving_status,
)

S = SetupState
W = WorkerState

SETUP_LEGAL = [(a, b) for a, targets in SETUP_TRANSITIONS.items() for b in sorted(targets)]
WORKER_LEGAL = [(a, b) for a, targets in WORKER_TRANSITIONS.items() for b in sorted(targets)]


def test_tables_cover_every_state() -> None:
    assert set(SETUP_TRANSITIONS) == set(SetupState)
    assert set(WORKER_TRANSITIONS) == set(WorkerState)


@pytest.mark.parametrize(("current", "new"), SETUP_LEGAL)
def test_every_listed_setup_transition_is_accepted(current: SetupState, new: SetupState) -> None:
    assert check_setup(current, new) is new


@pytest.mark.parametrize(("current", "new"), WORKER_LEGAL)
def test_every_listed_worker_transition_is_accepted(current: WorkerState, new: WorkerState) -> None:
    assert check_worker(current, new) is new


def test_every_unlisted_transition_is_refused() -> None:
    for a in SetupState:
        for b in set(SetupState) - SETUP_TRANSITIONS[a]:
            with pytest.raises(InvalidTransition):
                check_setup(a, b)
    for a in WorkerState:
        for b in set(WorkerState) - WORKER_TRANSITIONS[a]:
            with pytest.raises(InvalidTransition):
                check_worker(a, b)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.DELETED, S.RUNNING),
        (S.DELETED, S.STARTING),
        (S.STARTING, S.RUNNING),
        (S.FILESYSTEM_CREATED, S.MODEL_DOWNLOADED),
        (S.CLEANING, S.RUNNING),
    ],
)
def test_illegal_setup_transitions_raise(current: SetupState, new: SetupState) -> None:
    with pytest.raises(InvalidTransition, match=f"from {current} to {new}"):
        check_setup(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (W.STOPPED, W.HEALTHY),
        (W.FAILED, W.HEALTHY),
        (W.DRAINING, W.HEALTHY),
        (W.STOPPED, W.PROVISIONING),
        (W.HEALTHY, W.PROVISIONING),
    ],
)
def test_illegal_worker_transitions_raise(current: WorkerState, new: WorkerState) -> None:
    with pytest.raises(InvalidTransition, match=f"from {current} to {new}"):
        check_worker(current, new)


def test_invalid_transition_is_a_value_error() -> None:
    assert issubclass(InvalidTransition, ValueError)


def test_setup_happy_path_is_legal_in_order() -> None:
    path = [S.STARTING, S.FILESYSTEM_CREATED, S.DOWNLOADING_MODEL, S.MODEL_DOWNLOADED, S.RUNNING]
    state = path[0]
    for nxt in path[1:]:
        state = check_setup(state, nxt)
    assert state is S.RUNNING


def test_delete_path_is_legal_in_order() -> None:
    state = S.RUNNING
    for nxt in (S.DELETING, S.CLEANING, S.DELETED):
        state = check_setup(state, nxt)
    assert state is S.DELETED


def status(
    setup: SetupState = S.RUNNING,
    workers: list[WorkerState] | None = None,
    *,
    crash_looping: bool = False,
    waiting_for_gpus: bool = False,
    recent_failures: int = 0,
) -> ServingStatus:
    return serving_status(
        setup,
        workers or [],
        crash_looping=crash_looping,
        waiting_for_gpus=waiting_for_gpus,
        recent_failures=recent_failures,
    )


def test_ready_with_a_healthy_worker() -> None:
    assert status(workers=[W.HEALTHY]) is ServingStatus.READY
    assert status(workers=[W.SLEEPING]) is ServingStatus.READY


def test_degraded_after_recent_failures_or_waiting_for_gpus() -> None:
    assert status(workers=[W.HEALTHY], recent_failures=1) is ServingStatus.DEGRADED
    assert status(workers=[W.HEALTHY], waiting_for_gpus=True) is ServingStatus.DEGRADED


def test_starting_while_setup_runs_or_a_worker_provisions() -> None:
    assert status(S.DOWNLOADING_MODEL) is ServingStatus.STARTING
    assert status(S.STARTING, [W.HEALTHY]) is ServingStatus.STARTING
    assert status(workers=[W.PROVISIONING]) is ServingStatus.STARTING


def test_pending_while_waiting_for_gpus_with_no_worker() -> None:
    assert status(waiting_for_gpus=True) is ServingStatus.PENDING
    assert status(workers=[W.PROVISIONING], waiting_for_gpus=True) is ServingStatus.PENDING


def test_scaled_to_zero_with_no_live_worker() -> None:
    assert status() is ServingStatus.SCALED_TO_ZERO
    assert status(workers=[W.STOPPED, W.FAILED, W.DRAINING]) is ServingStatus.SCALED_TO_ZERO


def test_error_when_setup_failed_or_crash_looping() -> None:
    assert status(S.FAILED) is ServingStatus.ERROR
    assert status(workers=[W.HEALTHY], crash_looping=True) is ServingStatus.ERROR
