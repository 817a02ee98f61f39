"""Predictive pre-warm (`prewake: "history"`) acted on by the controller: a fake ladder
clock and a fake usage history (the hours in which the deployment had requests); bursts
began at 09:00 on the last three Mondays, so a cold deployment gets a worker a little before
09:00 this Monday, a sleeping one is woken, and nothing happens at other hours. The history
is read off the loop, once, and again after an hour."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from torpor.admission import Admission
from torpor.controller import Controller
from torpor.engines.base import SleepMode
from torpor.gpus import GpuPool
from torpor.ladder import burst_starts, history_next_check
from torpor.runtime.base import WorkerHandle
from torpor.runtime.fake import FakeRuntime
from torpor.settings import Settings
from torpor.spec import DeploymentSpec
from torpor.states import WorkerState
from torpor.store import Store, open_store

MONDAY = datetime(2026, 6, 1, tzinfo=UTC)  # a Monday


class Wall:
    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


class History:
    """Active hours of the last weeks: Monday 09:00 and 10:00 (one burst, two hours)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], datetime]] = []

    async def active_hours(
        self, deployments: Sequence[str], since: datetime
    ) -> dict[str, list[datetime]]:
        self.calls.append((list(deployments), since))
        hours = [
            MONDAY - timedelta(weeks=w) + timedelta(hours=h) for w in (1, 2, 3) for h in (9, 10)
        ]
        return {name: [h for h in hours if h >= since] for name in deployments}


class Sleeper:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def sleep(self, handle: WorkerHandle, mode: SleepMode) -> None:
        self.calls.append("sleep")

    async def wake(self, handle: WorkerHandle, mode: SleepMode) -> None:
        self.calls.append("wake")


def spec(name: str, **fields: Any) -> DeploymentSpec:
    return DeploymentSpec.model_validate(
        {
            "name": name,
            "framework": "custom",
            "options": {"command": "engine --port {port}", "health_path": "/health"},
            "min_workers": 0,
            "idle_timeout_s": 3600,
            "prewake": "history",
            **fields,
        }
    )


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[Controller, Wall, History, Sleeper]]:
    store: Store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'torpor.db'}")
    settings = Settings(
        data_dir=tmp_path,
        create_default_deployment=False,
        probe_interval_s=0.01,
        controller_idle_tick_s=0.05,
    )
    wall, history, sleeper = Wall(MONDAY + timedelta(hours=8, minutes=50)), History(), Sleeper()
    admission = Admission(time.monotonic, lambda _n: None)
    c = Controller(
        settings,
        store,
        FakeRuntime(),
        admission,
        GpuPool([]),
        time.monotonic,
        history=history,
        wall=wall,
    )
    c.ladder.sleeper = sleeper
    admission._on_demand = lambda _n: c.wake()
    c.start()
    yield c, wall, history, sleeper
    await c.shutdown()
    await store.close()


def states(c: Controller, name: str) -> list[WorkerState]:
    return [w.state for w in c.deployments[name].workers.values() if w.live]


async def until(check: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_burst_starts_and_next_check() -> None:
    nine = MONDAY + timedelta(hours=9)
    hours = [nine, nine + timedelta(hours=1), nine + timedelta(hours=5)]
    assert burst_starts(hours) == [nine, nine + timedelta(hours=5)]
    at = MONDAY + timedelta(hours=8, minutes=10)
    assert history_next_check(at, 120.0) == MONDAY + timedelta(hours=8, minutes=58)


async def test_cold_deployment_gets_a_worker_before_the_usual_hour(
    parts: tuple[Controller, Wall, History, Sleeper],
) -> None:
    c, wall, history, _ = parts
    await c.create(spec("habit"))
    await until(lambda: len(history.calls) == 1)
    assert history.calls[0][0] == ["habit"]
    assert c.ladder.bursts["habit"] == [
        MONDAY - timedelta(weeks=w) + timedelta(hours=9) for w in (3, 2, 1)
    ]
    for _ in range(5):
        await c.tick()
    assert states(c, "habit") == []  # 08:50: not yet

    wall.at = MONDAY + timedelta(hours=8, minutes=58, seconds=30)  # 90 s before 09:00
    c.wake()
    await until(lambda: states(c, "habit") == [WorkerState.HEALTHY])
    assert len(history.calls) == 1  # read once, not on every cycle

    wall.at = MONDAY + timedelta(hours=10)  # an hour later: read again
    c.wake()
    await until(lambda: len(history.calls) == 2)


async def test_sleeping_worker_woken_before_the_usual_hour_not_at_others(
    parts: tuple[Controller, Wall, History, Sleeper],
) -> None:
    c, wall, _, sleeper = parts
    wall.at = MONDAY + timedelta(hours=8, minutes=59)
    await c.create(spec("napper", sleep_after_s=0.2))
    await until(lambda: states(c, "napper") == [WorkerState.HEALTHY])  # pre-warmed

    wall.at = MONDAY + timedelta(hours=11)  # no burst begins at 12:00: it sleeps
    c.wake()
    await until(lambda: states(c, "napper") == [WorkerState.SLEEPING])
    await until(lambda: sleeper.calls == ["sleep"])
    for _ in range(5):
        await c.tick()
    assert states(c, "napper") == [WorkerState.SLEEPING]

    # A week later, 90 s before 09:00: woken (bursts began then in 3 of the last 4 weeks).
    wall.at = MONDAY + timedelta(weeks=1, hours=8, minutes=58, seconds=30)
    c.wake()
    await until(lambda: states(c, "napper") == [WorkerState.HEALTHY])
    assert sleeper.calls == ["sleep", "wake"]
    assert c.deployments["napper"].wakes == 1
