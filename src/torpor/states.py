"""State enums with their transition tables, and the serving status derived from them."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from torpor.errors import InvalidTransition as InvalidTransition


class SetupState(StrEnum):
    STARTING = "starting"
    FILESYSTEM_CREATED = "filesystem_created"
    DOWNLOADING_MODEL = "downloading_model"
    MODEL_DOWNLOADED = "model_downloaded"
    RUNNING = "running"
    FAILED = "failed"
    DELETING = "deleting"
    CLEANING = "cleaning"
    DELETED = "deleted"


_S = SetupState
SETUP_TRANSITIONS: Mapping[SetupState, frozenset[SetupState]] = {
    _S.STARTING: frozenset({_S.FILESYSTEM_CREATED, _S.FAILED, _S.DELETING}),
    _S.FILESYSTEM_CREATED: frozenset({_S.DOWNLOADING_MODEL, _S.FAILED, _S.DELETING}),
    _S.DOWNLOADING_MODEL: frozenset({_S.MODEL_DOWNLOADED, _S.FAILED, _S.DELETING}),
    _S.MODEL_DOWNLOADED: frozenset({_S.RUNNING, _S.FAILED, _S.DELETING}),
    # A spec change that needs a new model runs the pipeline again from the start.
    _S.RUNNING: frozenset({_S.STARTING, _S.FAILED, _S.DELETING}),
    _S.FAILED: frozenset({_S.STARTING, _S.DELETING}),
    _S.DELETING: frozenset({_S.CLEANING, _S.FAILED}),
    _S.CLEANING: frozenset({_S.DELETED, _S.FAILED}),
    _S.DELETED: frozenset(),
}


class WorkerState(StrEnum):
    PROVISIONING = "provisioning"
    HEALTHY = "healthy"
    SLEEPING = "sleeping"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


_W = WorkerState
WORKER_TRANSITIONS: Mapping[WorkerState, frozenset[WorkerState]] = {
    _W.PROVISIONING: frozenset({_W.HEALTHY, _W.DRAINING, _W.STOPPED, _W.FAILED}),
    _W.HEALTHY: frozenset({_W.SLEEPING, _W.DRAINING, _W.STOPPED, _W.FAILED}),
    _W.SLEEPING: frozenset({_W.HEALTHY, _W.DRAINING, _W.STOPPED, _W.FAILED}),
    _W.DRAINING: frozenset({_W.STOPPED, _W.FAILED}),
    _W.STOPPED: frozenset(),
    _W.FAILED: frozenset(),
}

LIVE_WORKER_STATES = frozenset({_W.PROVISIONING, _W.HEALTHY, _W.SLEEPING})
TERMINAL_WORKER_STATES = frozenset({_W.STOPPED, _W.FAILED})


def check_setup(current: SetupState, new: SetupState) -> SetupState:
    if new not in SETUP_TRANSITIONS[current]:
        raise InvalidTransition(f"deployment setup cannot go from {current} to {new}")
    return new


def check_worker(current: WorkerState, new: WorkerState) -> WorkerState:
    if new not in WORKER_TRANSITIONS[current]:
        raise InvalidTransition(f"worker cannot go from {current} to {new}")
    return new


class ServingStatus(StrEnum):
    READY = "ready"
    DEGRADED = "degraded"
    STARTING = "starting"
    PENDING = "pending"
    SCALED_TO_ZERO = "scaled_to_zero"
    ERROR = "error"


def serving_status(
    setup: SetupState,
    worker_states: list[WorkerState],
    *,
    crash_looping: bool,
    waiting_for_gpus: bool,
    recent_failures: int,
) -> ServingStatus:
    """Derived, never stored: what a user sees as the deployment's health."""
    if setup is SetupState.FAILED or crash_looping:
        return ServingStatus.ERROR
    if setup is not SetupState.RUNNING:
        return ServingStatus.STARTING
    healthy = sum(1 for s in worker_states if s in (_W.HEALTHY, _W.SLEEPING))
    provisioning = sum(1 for s in worker_states if s is _W.PROVISIONING)
    if waiting_for_gpus and healthy == 0:
        return ServingStatus.PENDING
    if healthy == 0:
        return ServingStatus.STARTING if provisioning else ServingStatus.SCALED_TO_ZERO
    if recent_failures or waiting_for_gpus:
        return ServingStatus.DEGRADED
    return ServingStatus.READY


class Lifecycle(StrEnum):
    """The model's lifecycle as the dashboard shows it."""

    COLD = "cold"
    WARMING_UP = "warming_up"
    ACTIVE = "active"
    SLEEPING = "sleeping"
    FAILED = "failed"


def lifecycle(status: ServingStatus, worker_states: list[WorkerState]) -> Lifecycle:
    """Derived, never stored."""
    if status is ServingStatus.ERROR:
        return Lifecycle.FAILED
    if any(s is _W.HEALTHY for s in worker_states):
        return Lifecycle.ACTIVE
    if any(s is _W.PROVISIONING for s in worker_states):
        return Lifecycle.WARMING_UP
    if any(s is _W.SLEEPING for s in worker_states):
        return Lifecycle.SLEEPING
    return Lifecycle.COLD
