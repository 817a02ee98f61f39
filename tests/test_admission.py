"""Admission: slots on workers, the bounded FIFO queue, timeouts, cancellation, affinity."""

from __future__ import annotations

import asyncio

import pytest

from torpor.admission import Admission, DeploymentGate, Lease, Route
from torpor.errors import Conflict, NotFound, QueueFull, WaitTimeout


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def demands() -> list[str]:
    return []


@pytest.fixture
def admission(clock: Clock, demands: list[str]) -> Admission:
    return Admission(clock, demands.append)


@pytest.fixture
def gate(admission: Admission) -> DeploymentGate:
    return admission.open("dep", max_queue=10, wait_time_s=5.0)


def route(worker_id: str, concurrency: int = 2) -> Route:
    return Route(worker_id, f"http://127.0.0.1/{worker_id}", concurrency)


def acquire(gate: DeploymentGate, session_id: str | None = None) -> Lease:
    lease = gate.try_acquire(session_id)
    assert lease is not None
    return lease


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_open_returns_the_same_gate_and_updates_limits(admission: Admission) -> None:
    gate = admission.open("dep", max_queue=1, wait_time_s=1.0)
    again = admission.open("dep", max_queue=7, wait_time_s=9.0)
    assert again is gate
    assert (gate.max_queue, gate.wait_time_s) == (7, 9.0)
    assert admission.get("dep") is gate
    assert admission.get("other") is None


def test_no_routes_means_no_lease(gate: DeploymentGate) -> None:
    assert gate.try_acquire(None) is None


async def test_enqueue_signals_demand(gate: DeploymentGate, demands: list[str]) -> None:
    gate.enqueue(None)
    assert demands == ["dep"]
    assert gate.waiting == 1
    assert gate.demand == 1


async def test_set_routes_serves_waiters_in_order(gate: DeploymentGate) -> None:
    waiters = [gate.enqueue(None) for _ in range(3)]
    gate.set_routes([route("w1", concurrency=2)])
    assert [w.future.done() for w in waiters] == [True, True, False]
    assert gate.waiting == 1
    assert gate.inflight == {"w1": 2}
    lease = await gate.wait(waiters[0], within=1.0)
    assert lease is not None and lease.worker_id == "w1"


async def test_try_acquire_waits_behind_queued_requests(gate: DeploymentGate) -> None:
    gate.enqueue(None)
    gate.routes = {"w1": route("w1")}  # a slot exists, but the queue comes first
    assert gate.try_acquire(None) is None


async def test_concurrency_slots_are_respected(gate: DeploymentGate) -> None:
    gate.set_routes([route("w1"), route("w2")])
    leases = [acquire(gate) for _ in range(4)]
    assert sorted(lease.worker_id for lease in leases) == ["w1", "w1", "w2", "w2"]
    assert gate.try_acquire(None) is None
    waiter = gate.enqueue(None)
    assert not waiter.future.done()
    assert gate.total_inflight == 4
    assert gate.demand == 5


async def test_release_hands_the_slot_to_the_oldest_waiter(
    gate: DeploymentGate, clock: Clock
) -> None:
    gate.set_routes([route("w1", concurrency=1)])
    held = acquire(gate)
    first = gate.enqueue(None)
    clock.now += 1
    second = gate.enqueue(None)
    assert gate.oldest_wait_s() == 1.0
    held.release()
    assert first.future.done() and not second.future.done()
    assert gate.last_release["w1"] == clock.now
    held.release()  # a second release is a no-op
    assert gate.inflight == {"w1": 1}
    assert not second.future.done()


async def test_release_without_waiters_frees_the_slot(gate: DeploymentGate) -> None:
    gate.set_routes([route("w1", concurrency=1)])
    lease = acquire(gate)
    assert gate.try_acquire(None) is None
    lease.release()
    assert gate.inflight == {}
    assert gate.try_acquire(None) is not None


async def test_queue_full_is_429_with_retry_after(admission: Admission) -> None:
    gate = admission.open("small", max_queue=2, wait_time_s=5.0)
    gate.enqueue(None)
    gate.enqueue(None)
    with pytest.raises(QueueFull) as info:
        gate.enqueue(None)
    assert info.value.status == 429
    assert info.value.headers == {"Retry-After": "1"}
    assert gate.waiting == 2


async def test_wait_timeout_while_a_worker_starts_is_504(gate: DeploymentGate) -> None:
    waiter = gate.enqueue(None)
    gate.starting = True
    assert await gate.wait(waiter, within=0.01) is None
    assert gate.waiting == 1  # still queued until the caller abandons it
    error = gate.timeout_error()
    assert isinstance(error, WaitTimeout)
    assert error.status == 504
    gate.abandon(waiter)
    assert gate.waiting == 0


async def test_wait_timeout_without_a_starting_worker_is_429(gate: DeploymentGate) -> None:
    waiter = gate.enqueue(None)
    assert await gate.wait(waiter, within=0.01) is None
    error = gate.timeout_error()
    assert isinstance(error, QueueFull)
    assert error.status == 429
    assert error.headers["Retry-After"] == "1"


async def test_acquire_raises_the_timeout_error_and_leaves_the_queue(
    admission: Admission,
) -> None:
    gate = admission.open("dep", max_queue=10, wait_time_s=0.01)
    gate.starting = True
    with pytest.raises(WaitTimeout):
        await gate.acquire(None)
    assert gate.waiting == 0


async def test_acquire_waits_for_a_route(gate: DeploymentGate) -> None:
    task = asyncio.create_task(gate.acquire("s"))
    await settle()
    assert gate.waiting == 1
    gate.set_routes([route("w1")])
    lease = await asyncio.wait_for(task, 1.0)
    assert lease.worker_id == "w1"
    assert gate.affinity == {"s": "w1"}


async def test_fail_waiters_raises_the_error_in_each_waiter(gate: DeploymentGate) -> None:
    waiters = [gate.enqueue(None) for _ in range(2)]
    gate.fail_waiters(NotFound("gone"))
    assert gate.waiting == 0
    for waiter in waiters:
        with pytest.raises(NotFound, match="gone"):
            await gate.wait(waiter, within=1.0)


async def test_cancelled_waiter_leaves_the_queue(gate: DeploymentGate) -> None:
    waiter = gate.enqueue(None)
    task = asyncio.create_task(gate.wait(waiter, within=10.0))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.waiting == 0
    gate.set_routes([route("w1")])
    assert gate.inflight == {}


async def test_cancel_in_the_instant_of_a_grant_hands_the_lease_back(
    gate: DeploymentGate,
) -> None:
    waiter = gate.enqueue(None)
    task = asyncio.create_task(gate.wait(waiter, within=10.0))
    await settle()
    gate.set_routes([route("w1", concurrency=1)])
    assert waiter.future.done()
    assert gate.inflight == {"w1": 1}
    task.cancel()  # before the waiting task saw its lease
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.waiting == 0
    assert gate.inflight == {}
    assert gate.try_acquire(None) is not None


async def test_blocked_gate_refuses_at_once(admission: Admission) -> None:
    gate = admission.open("dep", max_queue=10, wait_time_s=5.0)
    waiter = gate.enqueue(None)
    admission.close("dep", Conflict("deleting"))
    assert admission.get("dep") is None
    with pytest.raises(Conflict):
        gate.try_acquire(None)
    with pytest.raises(Conflict):
        gate.enqueue(None)
    with pytest.raises(Conflict):
        await gate.wait(waiter, within=1.0)


async def test_session_sticks_to_its_worker_while_it_has_a_slot(gate: DeploymentGate) -> None:
    gate.set_routes([route("w1", concurrency=3), route("w2", concurrency=3)])
    first = acquire(gate, "s")
    # Sticky even though the other worker is less loaded.
    assert [acquire(gate, "s").worker_id for _ in range(2)] == [first.worker_id] * 2
    other = acquire(gate, "s")
    assert other.worker_id != first.worker_id
    assert gate.affinity["s"] == other.worker_id


async def test_affinity_is_dropped_with_the_route(gate: DeploymentGate) -> None:
    gate.set_routes([route("w1"), route("w2")])
    assert acquire(gate, "s").worker_id == "w1"
    gate.set_routes([route("w2")])
    assert "s" not in gate.affinity
    assert acquire(gate, "s").worker_id == "w2"


async def test_report_broken_removes_the_route(gate: DeploymentGate) -> None:
    gate.set_routes([route("w1", concurrency=1), route("w2", concurrency=1)])
    assert acquire(gate).worker_id == "w1"
    gate.report_broken("w2")
    assert "w2" not in gate.routes
    assert gate.try_acquire(None) is None
    gate.report_broken("unknown")  # harmless


async def test_unreachable_worker_stays_out_of_routing_for_a_while(
    gate: DeploymentGate, clock: Clock
) -> None:
    from torpor.admission import SUSPEND_UNREACHABLE_S

    gate.set_routes([route("w1"), route("w2")])
    gate.report_broken("w2")
    # The controller has not seen the process die yet and publishes it again.
    gate.set_routes([route("w1"), route("w2")])
    assert set(gate.routes) == {"w1"}
    clock.now += SUSPEND_UNREACHABLE_S + 0.1
    gate.set_routes([route("w1"), route("w2")])  # it was only a hiccup: back in
    assert set(gate.routes) == {"w1", "w2"}
    assert gate.suspended == {}


async def test_demand_is_inflight_plus_queued(gate: DeploymentGate) -> None:
    gate.set_routes([route("w1", concurrency=2)])
    leases = [acquire(gate), acquire(gate)]
    for _ in range(3):
        gate.enqueue(None)
    assert gate.demand == 5
    leases[0].release()  # one request done; its slot goes to the oldest waiter
    assert gate.demand == 4
    assert (gate.total_inflight, gate.waiting) == (2, 2)
    gate.fail_waiters(NotFound())
    assert gate.demand == 2
