"""Workers adopted after a restart of torpor (as on Ray, where actors outlive it) take part in
the sleep/wake ladder: they get their engine's sleep mode, one that slept before the restart
is adopted asleep (out of routing) and woken by demand, an awake one sleeps after
sleep_after_s; a worker whose sleep would be a process freeze on another node skips the rung
(nothing on this host can signal it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from torpor.admission import Admission
from torpor.controller import Controller
from torpor.engines.base import SleepMode
from torpor.gpus import GpuPool
from torpor.runtime.base import WorkerHandle, WorkerRecord
from torpor.runtime.fake import FakeRuntime
from torpor.settings import Settings
from torpor.spec import DeploymentSpec
from torpor.states import WorkerState
from torpor.store import Store, open_store
from torpor.store.db import utcnow
from torpor.store.tables import WorkerRow


class AdoptingRuntime(FakeRuntime):
    """Every stored worker is still running on a cluster node and can be taken over."""

    async def orphans(self, records: Sequence[WorkerRecord]) -> list[WorkerHandle]:
        return [
            WorkerHandle(r.worker_id, "127.0.0.1", r.port or 1, r.log_path, "/health", node="n1")
            for r in records
        ]

    async def adopt(self, handle: WorkerHandle) -> bool:
        self._started[handle.worker_id] = self._clock() - 100.0
        return True


class Sleeper:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def sleep(self, handle: WorkerHandle, mode: SleepMode) -> None:
        self.calls.append(("sleep", handle.worker_id))

    async def wake(self, handle: WorkerHandle, mode: SleepMode) -> None:
        self.calls.append(("wake", handle.worker_id))


def spec(name: str, sleep_api: str) -> DeploymentSpec:
    return DeploymentSpec.model_validate(
        {
            "name": name,
            "framework": "custom",
            "options": {
                "command": "engine --port {port}",
                "health_path": "/health",
                "sleep_api": sleep_api,
            },
            "min_workers": 0,
            "sleep_after_s": 0.3,
            "idle_timeout_s": 3600,
        }
    )


def controller(tmp_path: Path, store: Store, runtime: FakeRuntime) -> Controller:
    settings = Settings(
        data_dir=tmp_path,
        create_default_deployment=False,
        probe_interval_s=0.01,
        controller_idle_tick_s=0.05,
    )
    admission = Admission(time.monotonic, lambda _n: None)
    c = Controller(settings, store, runtime, admission, GpuPool([]), time.monotonic)
    admission._on_demand = lambda _n: c.wake()
    return c


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'torpor.db'}")
    yield s
    await s.close()


async def until(check: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_adopted_workers_sleep_and_wake_like_others(tmp_path: Path, store: Store) -> None:
    first = controller(tmp_path, store, FakeRuntime())
    first.start()
    await first.create(spec("vl", "vllm"))
    await first.create(spec("fr", "freeze"))
    versions = {n: first.deployments[n].spec_version for n in ("vl", "fr")}
    await first.shutdown()
    # What the store holds after a crash: workers still running on a node.
    rows = [("vl-asleep", "vl", "sleeping"), ("vl-awake", "vl", "healthy"),
            ("fr-awake", "fr", "healthy")]  # fmt: skip
    await store.save_workers(
        [
            WorkerRow(
                id=wid,
                deployment=dep,
                state=state,
                spec_version=versions[dep],
                port=9,
                log_path=str(tmp_path / f"{wid}.log"),
                gpu_ids=[],
                restarts=0,
                started_at=utcnow(),
                ready_at=utcnow(),
            )
            for wid, dep, state in rows
        ]
    )

    c = controller(tmp_path, store, AdoptingRuntime())
    sleeper = Sleeper()
    c.ladder.sleeper = sleeper
    await c.load()
    vl, fr = c.deployments["vl"], c.deployments["fr"]
    assert vl.workers["vl-asleep"].state is WorkerState.SLEEPING
    assert vl.workers["vl-asleep"].sleep_mode is not None
    assert [w.state for w in vl.workers.values()].count(WorkerState.HEALTHY) == 1
    c.start()

    # The awake one sleeps after sleep_after_s, through the engine's API.
    await until(lambda: vl.workers["vl-awake"].state is WorkerState.SLEEPING)
    await until(lambda: ("sleep", "vl-awake") in sleeper.calls)
    assert ("sleep", "vl-asleep") not in sleeper.calls  # already asleep
    # Demand wakes the most recently used sleeper, and the request gets it.
    lease = await asyncio.wait_for(vl.gate.acquire(None), 5)
    assert lease.worker_id == "vl-awake"
    assert ("wake", "vl-awake") in sleeper.calls
    lease.release()
    # A freeze on another node cannot be done from here: that worker stays awake.
    await asyncio.sleep(0.6)
    assert fr.workers["fr-awake"].state is WorkerState.HEALTHY
    assert not [call for call in sleeper.calls if call[1] == "fr-awake"]
    await c.shutdown()
