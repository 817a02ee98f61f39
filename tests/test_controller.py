"""The controller owns its state: API commands run on its loop, in order, and races that
interleaved with the loop before are driven here deterministically (a runtime whose start
and stop wait for the test), with the real store on SQLite and no processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from torpor.admission import Admission, Lease
from torpor.controller import Controller
from torpor.errors import Conflict, NoCapacity
from torpor.gpus import GpuPool, parse_declared
from torpor.runtime.base import LaunchSpec, WorkerHandle
from torpor.runtime.fake import FakeRuntime
from torpor.settings import Settings
from torpor.spec import DeploymentPatch, DeploymentSpec
from torpor.states import SetupState, WorkerState
from torpor.store import Store, open_store


class GatedRuntime(FakeRuntime):
    """A fake runtime whose starts and stops wait until the test opens their gate."""

    def __init__(self) -> None:
        super().__init__()
        self.start_gate = asyncio.Event()
        self.start_gate.set()
        self.stop_gate = asyncio.Event()
        self.stop_gate.set()
        self.start_called = asyncio.Event()
        self.stop_called = asyncio.Event()
        self.handles: list[WorkerHandle] = []
        self.stopped: list[str] = []

    async def start(self, launch: LaunchSpec) -> WorkerHandle:
        self.start_called.set()
        await self.start_gate.wait()
        handle = await super().start(launch)
        self.handles.append(handle)
        return handle

    async def stop(self, handle: WorkerHandle, grace_s: float) -> int | None:
        self.stop_called.set()
        await self.stop_gate.wait()
        self.stopped.append(handle.worker_id)
        return await super().stop(handle, grace_s)


def spec(name: str, **fields: Any) -> DeploymentSpec:
    return DeploymentSpec.model_validate(
        {
            "name": name,
            "framework": "custom",
            "options": {"command": "engine --port {port}", "health_path": "/health"},
            "idle_timeout_s": 3600,
            "wait_time_s": 10,
            **fields,
        }
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'torpor.db'}")
    yield s
    await s.close()


Make = Callable[..., Controller]


@pytest.fixture
async def make(tmp_path: Path, store: Store) -> AsyncIterator[Make]:
    made: list[Controller] = []

    def build(runtime: FakeRuntime, gpus: str = "") -> Controller:
        settings = Settings(
            data_dir=tmp_path,
            create_default_deployment=False,
            probe_interval_s=0.01,
            controller_idle_tick_s=0.05,
            restart_backoff_base_s=0.01,
        )
        admission = Admission(time.monotonic, lambda _n: None)
        pool = GpuPool(parse_declared(gpus) if gpus else [])
        c = Controller(settings, store, runtime, admission, pool, time.monotonic)
        admission._on_demand = lambda _n: c.wake()
        made.append(c)
        return c

    yield build
    for c in made:
        await c.shutdown()


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def workers(c: Controller, name: str, *states: WorkerState) -> list[Any]:
    dep = c.deployments.get(name)
    if dep is None:
        return []
    return [w for w in dep.workers.values() if not states or w.state in states]


async def test_delete_while_a_worker_start_is_under_way_stops_the_started_worker(
    make: Make,
) -> None:
    runtime = GatedRuntime()
    runtime.start_gate.clear()
    c = make(runtime)
    c.start()
    await c.create(spec("race", min_workers=1))
    await asyncio.wait_for(runtime.start_called.wait(), 5)
    assert len(workers(c, "race", WorkerState.PROVISIONING)) == 1

    deleting = asyncio.create_task(c.delete("race"))
    await until(lambda: c.deployments["race"].state is SetupState.DELETING)
    # The worker's process comes up only now, after the delete stopped the worker.
    runtime.start_gate.set()
    await asyncio.wait_for(deleting, 5)

    assert "race" not in c.deployments
    assert [h.worker_id for h in runtime.handles] == runtime.stopped
    assert len(runtime.stopped) == 1
    assert runtime.live == 0


async def test_patch_during_delete_is_refused_and_the_delete_completes(
    make: Make, store: Store
) -> None:
    # Before: the patch re-ran the setup pipeline while the delete awaited the worker's
    # stop, and the pipeline's next step drove the deleting deployment to `failed`.
    runtime = GatedRuntime()
    c = make(runtime)
    c.start()
    await c.create(spec("pd", min_workers=1))
    await until(lambda: len(workers(c, "pd", WorkerState.HEALTHY)) == 1)

    dep = c.deployments["pd"]
    runtime.stop_gate.clear()
    deleting = asyncio.create_task(c.delete("pd"))
    await asyncio.wait_for(runtime.stop_called.wait(), 5)
    with pytest.raises(Conflict):
        await c.update("pd", DeploymentPatch(model="other", env={"X": "1"}))
    runtime.stop_gate.set()
    await asyncio.wait_for(deleting, 5)

    assert "pd" not in c.deployments
    assert dep.state is SetupState.DELETED
    assert dep.spec.model == ""  # the refused patch changed nothing
    assert await store.list_deployments() == []


async def test_commands_run_in_order_on_the_loop(make: Make) -> None:
    c = make(FakeRuntime())
    c.start()
    created = asyncio.create_task(c.create(spec("order", min_workers=0)))
    patched = asyncio.create_task(c.update("order", DeploymentPatch(max_workers=3)))
    deleted = asyncio.create_task(c.delete("order"))
    await asyncio.wait_for(asyncio.gather(created, patched, deleted), 5)
    assert (await patched).spec.max_workers == 3
    assert "order" not in c.deployments


async def test_rollout_on_a_full_host_replaces_in_place_with_no_failed_request(
    make: Make,
) -> None:
    runtime = FakeRuntime()
    c = make(runtime, gpus="1xA100")
    c.start()
    await c.create(spec("roll", gpus=1, min_workers=1, max_workers=1, concurrency=1))
    await until(lambda: len(workers(c, "roll", WorkerState.HEALTHY)) == 1)
    gate = c.deployments["roll"].gate
    old = workers(c, "roll", WorkerState.HEALTHY)[0]
    busy = await gate.acquire(None)  # a request in flight on the old worker

    await c.update("roll", DeploymentPatch(env={"V": "2"}))
    queued = [asyncio.create_task(gate.acquire(None)) for _ in range(3)]
    await until(lambda: old.state is WorkerState.DRAINING)
    assert not any(t.done() for t in queued)  # waiting, not failed with 503
    busy.release()

    async def serve(t: asyncio.Task[Lease]) -> int:
        lease = await t
        version = c.deployments["roll"].workers[lease.worker_id].spec_version
        lease.release()
        return version

    versions = await asyncio.wait_for(asyncio.gather(*(serve(t) for t in queued)), 5)
    assert versions == [2, 2, 2]
    assert old.state is WorkerState.STOPPED
    assert [w.spec_version for w in workers(c, "roll", WorkerState.HEALTHY)] == [2]


async def test_rollout_of_several_workers_on_a_full_host_keeps_one_serving(
    make: Make,
) -> None:
    c = make(FakeRuntime(), gpus="2xA100")
    c.start()
    await c.create(spec("roll2", gpus=1, min_workers=2, max_workers=2))
    await until(lambda: len(workers(c, "roll2", WorkerState.HEALTHY)) == 2)
    await c.update("roll2", DeploymentPatch(env={"V": "2"}))
    seen_zero = False

    def done() -> bool:
        nonlocal seen_zero
        healthy = workers(c, "roll2", WorkerState.HEALTHY)
        seen_zero = seen_zero or not healthy
        return len(healthy) == 2 and all(w.spec_version == 2 for w in healthy)

    await until(done)
    assert not seen_zero


async def test_no_503_for_queued_requests_while_a_healthy_worker_serves(make: Make) -> None:
    c = make(FakeRuntime(), gpus="1xA100")
    c.start()
    await c.create(spec("busy", gpus=1, min_workers=1, max_workers=2, concurrency=1))
    await until(lambda: len(workers(c, "busy", WorkerState.HEALTHY)) == 1)
    gate = c.deployments["busy"].gate
    first = await gate.acquire(None)
    second = asyncio.create_task(gate.acquire(None))  # wants a second worker: no device
    await until(lambda: c.deployments["busy"].waiting_for_gpus)
    for _ in range(5):
        await c.tick()
    assert not second.done()
    first.release()
    lease = await asyncio.wait_for(second, 5)
    assert lease.worker_id == first.worker_id
    lease.release()


async def test_queued_requests_get_503_when_no_worker_can_serve_them(make: Make) -> None:
    c = make(FakeRuntime(), gpus="1xA100")
    c.start()
    await c.create(spec("hog", gpus=1, min_workers=1, max_workers=1))
    await until(lambda: len(workers(c, "hog", WorkerState.HEALTHY)) == 1)
    await c.create(spec("starved", gpus=1, min_workers=0, max_workers=1))
    await until(lambda: c.deployments["starved"].state is SetupState.RUNNING)
    with pytest.raises(NoCapacity):
        await asyncio.wait_for(c.deployments["starved"].gate.acquire(None), 5)


async def test_a_worker_that_cannot_start_is_failed_and_counted(make: Make) -> None:
    class Broken(FakeRuntime):
        async def start(self, launch: LaunchSpec) -> WorkerHandle:
            raise OSError("no such engine")

    c = make(Broken())
    c.start()
    await c.create(spec("broken", min_workers=1))
    await until(lambda: c.deployments["broken"].failures >= 1)
    failed = workers(c, "broken", WorkerState.FAILED)
    assert failed and failed[0].reason == "cannot start: no such engine"
