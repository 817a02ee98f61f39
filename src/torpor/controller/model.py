"""The controller's in-memory state: deployments and their workers (owned by its loop)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from torpor.admission import DeploymentGate
from torpor.engines.base import SleepMode
from torpor.ladder import Transition
from torpor.modelstore import DownloadProgress
from torpor.pipeline import JobState
from torpor.runtime import WorkerHandle
from torpor.spec import DeploymentSpec
from torpor.states import TERMINAL_WORKER_STATES, SetupState, WorkerState


@dataclass
class Worker:
    id: str
    deployment: str
    spec_version: int
    state: WorkerState
    log_path: Path
    restarts: int
    started_at: datetime
    started_mono: float
    gpu_ids: list[int] = field(default_factory=list)
    handle: WorkerHandle | None = None
    # The handle kept after the worker ended (its logs, its node, its exit information).
    last_handle: WorkerHandle | None = None
    # The runtime's start while it is under way (the handle arrives through the loop).
    start_task: asyncio.Task[WorkerHandle] | None = None
    # Started but not placed yet: waiting for cluster capacity.
    pending: bool = False
    ready_at: datetime | None = None
    ready_mono: float | None = None
    stopped_at: datetime | None = None
    reason: str | None = None
    exit_code: int | None = None
    dirty: bool = True
    # The ladder (torpor.ladder, controller.sleep): how this worker sleeps (None: it cannot),
    # a sleep or wake call in flight, whether its process is frozen, a wake asked for while
    # it was still going to sleep, when it last went to sleep, began waking and woke.
    sleep_mode: SleepMode | None = None
    transition: Transition = Transition.NONE
    frozen: bool = False
    wake_after: bool = False
    asleep_mono: float | None = None
    wake_started: float | None = None
    woke_mono: float | None = None
    wakes: int = 0
    last_wake_s: float | None = None

    @property
    def live(self) -> bool:
        return self.state not in TERMINAL_WORKER_STATES

    @property
    def node(self) -> str | None:
        h = self.handle or self.last_handle
        return h.node if h is not None else None


@dataclass
class Deployment:
    spec: DeploymentSpec
    spec_version: int
    state: SetupState
    created_at: datetime
    updated_at: datetime
    gate: DeploymentGate
    reason: str | None = None
    model_path: Path | None = None
    # The model fetch in progress (or last done) and the stored model's size.
    download: DownloadProgress | None = None
    model_size_bytes: int | None = None
    # Consecutive worker failures; reset when a worker becomes ready.
    failures: int = 0
    start_not_before: float = 0.0
    last_error: dict[str, Any] | None = None
    waiting_for_gpus: bool = False
    # Starts refused because the deployment's budget is spent (the reason), else None.
    budget_refusal: str | None = None
    desired: int = 0
    workers: dict[str, Worker] = field(default_factory=dict)
    # The setup pipeline's job: its task, what it has reported, and which run it belongs
    # to (a result of an earlier run is ignored).
    setup_task: asyncio.Task[None] | None = None
    job: JobState = JobState.NONE
    job_error: str | None = None
    setup_run: int = 0
    # Resolved when a delete has finished.
    deleted: asyncio.Future[None] | None = None
    # Recent wake latencies of its workers, in seconds (the fleet view's wake latency).
    wake_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    # Wakes of its workers since torpor started.
    wakes: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.live]


class WorkerMeter(Protocol):
    """Worker time for billing: told when a worker starts, is ready and stops."""

    def worker_started(
        self, worker_id: str, deployment: str, gpu_kind: str, gpu_count: int, at: datetime
    ) -> None: ...

    def worker_ready(self, worker_id: str, at: datetime) -> None: ...

    def worker_stopped(self, worker_id: str, at: datetime, reason: str | None) -> None: ...

    def worker_slept(self, worker_id: str, at: datetime, asleep: bool = True) -> None:
        """The worker fell asleep (or woke, `asleep` False) at `at`."""
        ...

    def scale_refusal(self, deployment: str) -> str | None:
        """Why the deployment may not start workers now (its budget is spent), or None."""
        ...
