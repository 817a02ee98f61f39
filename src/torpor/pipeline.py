"""The deployment setup pipeline as a pure function: (state, job facts) → plan.

`starting → filesystem_created → downloading_model → model_downloaded → running`, or
`failed` with the job's reason. One background job per run of the pipeline prepares the
deployment's directory, then fetches the model; it reports what it has done and the
controller's loop asks `plan_setup` which transitions follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from torpor.states import SetupState

SETUP_STATES = frozenset(
    {
        SetupState.STARTING,
        SetupState.FILESYSTEM_CREATED,
        SetupState.DOWNLOADING_MODEL,
        SetupState.MODEL_DOWNLOADED,
    }
)


class JobState(StrEnum):
    NONE = "none"  # not started for this run of the pipeline
    RUNNING = "running"
    FS_READY = "fs_ready"  # the directory exists; the model is being fetched
    DONE = "done"  # the model is stored
    FAILED = "failed"


@dataclass(frozen=True)
class SetupFacts:
    state: SetupState
    job: JobState
    error: str | None = None


@dataclass(frozen=True)
class SetupPlan:
    transitions: tuple[SetupState, ...] = ()
    start_job: bool = False
    reason: str | None = None


def plan_setup(facts: SetupFacts) -> SetupPlan:
    """The transitions the pipeline takes now (in order), and whether to start its job."""
    state, job = facts.state, facts.job
    if state not in SETUP_STATES:
        return SetupPlan()
    if job is JobState.FAILED:
        return SetupPlan((SetupState.FAILED,), reason=facts.error or "setup failed")
    if state is SetupState.STARTING and job is JobState.NONE:
        return SetupPlan(start_job=True)
    path: list[SetupState] = []
    if state is SetupState.STARTING:
        if job not in (JobState.FS_READY, JobState.DONE):
            return SetupPlan()
        state = SetupState.FILESYSTEM_CREATED
        path.append(state)
    if state is SetupState.FILESYSTEM_CREATED:
        state = SetupState.DOWNLOADING_MODEL
        path.append(state)
    if state is SetupState.DOWNLOADING_MODEL and job is JobState.DONE:
        state = SetupState.MODEL_DOWNLOADED
        path.append(state)
    if state is SetupState.MODEL_DOWNLOADED:
        path.append(SetupState.RUNNING)
    return SetupPlan(tuple(path))
