"""Admission: per deployment, slots on workers and a bounded queue of waiting requests.

Request handlers take a lease on a worker slot or wait for one; the controller publishes
which workers are routable. Everything runs on one event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from torpor.errors import NoCapacity, QueueFull, TorporError, WaitTimeout
from torpor.router import Candidate, pick_worker

# A worker the proxy could not reach gets no requests for this long: the controller sees a
# dead process well within it, and a worker that only hiccuped comes back after it.
SUSPEND_UNREACHABLE_S = 5.0
# Session ids remembered per deployment; the oldest are forgotten first.
AFFINITY_CAPACITY = 10_000


@dataclass(frozen=True)
class Route:
    worker_id: str
    url: str
    concurrency: int
    # When the worker last woke from sleep (the gate's clock) and how long the wake took:
    # a request that arrived before it woke waited for that wake.
    woke_at: float | None = None
    wake_s: float | None = None


@dataclass
class Lease:
    """One slot on one worker, held for the duration of one upstream request."""

    gate: DeploymentGate
    route: Route
    released: bool = False

    @property
    def worker_id(self) -> str:
        return self.route.worker_id

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.gate._release(self.route.worker_id)


@dataclass(eq=False)
class Waiter:
    session_id: str | None
    future: asyncio.Future[Lease]
    enqueued_at: float


@dataclass
class DeploymentGate:
    """Slots and queue of one deployment."""

    name: str
    max_queue: int
    wait_time_s: float
    clock: Callable[[], float]
    on_demand: Callable[[str], None]
    routes: dict[str, Route] = field(default_factory=dict)
    inflight: dict[str, int] = field(default_factory=dict)
    last_release: dict[str, float] = field(default_factory=dict)
    queue: deque[Waiter] = field(default_factory=deque)
    affinity: OrderedDict[str, str] = field(default_factory=OrderedDict)
    # Set when new requests must fail at once (setup failed, deployment deleted).
    blocked: TorporError | None = None
    # True while the controller has a worker starting: a wait that runs out is a 504.
    starting: bool = False
    # True while the only workers starting wait for capacity: a wait that runs out is a 503.
    no_capacity: bool = False
    # Workers the proxy found unreachable, and until when they get no requests.
    suspended: dict[str, float] = field(default_factory=dict)

    # -- request side -------------------------------------------------------------------

    def try_acquire(self, session_id: str | None) -> Lease | None:
        if self.blocked is not None:
            raise self.blocked
        if self.queue:  # first come, first served
            return None
        return self._grant(session_id)

    def enqueue(self, session_id: str | None) -> Waiter:
        if self.blocked is not None:
            raise self.blocked
        if len(self.queue) >= self.max_queue:
            raise QueueFull(headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        waiter = Waiter(session_id, loop.create_future(), self.clock())
        self.queue.append(waiter)
        self.on_demand(self.name)
        return waiter

    async def wait(self, waiter: Waiter, within: float) -> Lease | None:
        """Wait up to `within` seconds for a lease; None when the time ran out (waiter still queued).

        Cancelled (client gone) → the waiter leaves the queue, and a lease granted in the
        same instant is handed back.
        """
        try:
            await asyncio.wait({waiter.future}, timeout=max(0.0, within))
        except asyncio.CancelledError:
            self.abandon(waiter)
            raise
        if waiter.future.done():
            return waiter.future.result()  # raises the failure set by fail_waiters
        return None

    def abandon(self, waiter: Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled():
            if waiter.future.exception() is None:
                waiter.future.result().release()
            return
        waiter.future.cancel()
        with contextlib.suppress(ValueError):
            self.queue.remove(waiter)

    def timeout_error(self) -> TorporError:
        if self.no_capacity:
            return NoCapacity()
        if self.starting:
            return WaitTimeout()
        return QueueFull(headers={"Retry-After": "1"})

    async def acquire(self, session_id: str | None) -> Lease:
        """Take a slot, waiting up to wait_time_s; raises the right error otherwise."""
        lease = self.try_acquire(session_id)
        if lease is not None:
            return lease
        waiter = self.enqueue(session_id)
        lease = await self.wait(waiter, self.wait_time_s)
        if lease is None:
            self.abandon(waiter)
            raise self.timeout_error()
        return lease

    def remove_route(self, worker_id: str) -> None:
        """The controller took this worker out (stopping or draining it)."""
        self.routes.pop(worker_id, None)

    def report_broken(self, worker_id: str) -> None:
        """The proxy could not talk to this worker: no requests go to it for a while, even if
        the controller publishes it again before it has noticed the process died."""
        self.routes.pop(worker_id, None)
        self.suspended[worker_id] = self.clock() + SUSPEND_UNREACHABLE_S

    # -- controller side ----------------------------------------------------------------

    def set_routes(self, routes: list[Route]) -> None:
        if self.suspended:
            now = self.clock()
            published = {r.worker_id for r in routes}
            self.suspended = {
                w: until for w, until in self.suspended.items() if until > now and w in published
            }
        self.routes = {r.worker_id: r for r in routes if r.worker_id not in self.suspended}
        for session, worker in list(self.affinity.items()):
            if worker not in self.routes:
                del self.affinity[session]
        self._dispatch()

    def fail_waiters(self, error: TorporError) -> None:
        while self.queue:
            waiter = self.queue.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(error)

    @property
    def waiting(self) -> int:
        return len(self.queue)

    @property
    def total_inflight(self) -> int:
        return sum(self.inflight.values())

    @property
    def demand(self) -> int:
        return self.total_inflight + len(self.queue)

    def oldest_wait_s(self) -> float:
        return self.clock() - self.queue[0].enqueued_at if self.queue else 0.0

    # -- internals ------------------------------------------------------------------------

    def _candidates(self) -> list[Candidate]:
        return [
            Candidate(r.worker_id, self.inflight.get(r.worker_id, 0), r.concurrency)
            for r in self.routes.values()
        ]

    def _grant(self, session_id: str | None) -> Lease | None:
        worker_id = pick_worker(self._candidates(), session_id, self.affinity)
        if worker_id is None:
            return None
        self.inflight[worker_id] = self.inflight.get(worker_id, 0) + 1
        if session_id is not None:
            self.affinity[session_id] = worker_id
            self.affinity.move_to_end(session_id)
            if len(self.affinity) > AFFINITY_CAPACITY:
                self.affinity.popitem(last=False)
        return Lease(self, self.routes[worker_id])

    def _release(self, worker_id: str) -> None:
        left = self.inflight.get(worker_id, 0) - 1
        if left > 0:
            self.inflight[worker_id] = left
        else:
            self.inflight.pop(worker_id, None)
        self.last_release[worker_id] = self.clock()
        self._dispatch()

    def _dispatch(self) -> None:
        while self.queue:
            waiter = self.queue[0]
            if waiter.future.done():
                self.queue.popleft()
                continue
            lease = self._grant(waiter.session_id)
            if lease is None:
                return
            self.queue.popleft()
            waiter.future.set_result(lease)


class Admission:
    """All gates, by deployment name."""

    def __init__(self, clock: Callable[[], float], on_demand: Callable[[str], None]):
        self._clock = clock
        self._on_demand = on_demand
        self.gates: dict[str, DeploymentGate] = {}

    def open(self, name: str, max_queue: int, wait_time_s: float) -> DeploymentGate:
        gate = self.gates.get(name)
        if gate is None:
            gate = DeploymentGate(name, max_queue, wait_time_s, self._clock, self._on_demand)
            self.gates[name] = gate
        else:
            gate.max_queue, gate.wait_time_s = max_queue, wait_time_s
        return gate

    def close(self, name: str, error: TorporError) -> None:
        gate = self.gates.pop(name, None)
        if gate is not None:
            gate.blocked = error
            gate.fail_waiters(error)

    def get(self, name: str) -> DeploymentGate | None:
        return self.gates.get(name)
