"""Applying the ladder's decisions (torpor.ladder): sleep, wake, stop sleeping workers,
schedule windows, and GPU residency evictions.

Runs on the controller's loop. A sleep or wake call runs as a task whose result comes back
through the controller's inbox. A worker leaves routing the instant it is picked to sleep
(no await in between), and joins it again only once its wake call has returned.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from torpor.controller.model import Deployment, Worker
from torpor.engines.base import HttpCall, SleepMode
from torpor.gpus import GpuPool, matches_model
from torpor.ladder import (
    HISTORY_WEEKS,
    WEEK_S,
    LadderPolicy,
    LadderWorker,
    Resident,
    Transition,
    Window,
    awake_target,
    burst_starts,
    history_next_check,
    history_prewake,
    pick_evictions,
    plan_ladder,
    schedule_state,
)
from torpor.runtime import WorkerHandle
from torpor.states import WorkerState, check_worker
from torpor.store.db import utcnow

if TYPE_CHECKING:
    from torpor.controller.core import Controller

log = logging.getLogger(__name__)

# One engine control call (a vLLM level-2 wake reloads weights: minutes on a big model).
CONTROL_CALL_TIMEOUT_S = 600.0
# How often the usage history behind `prewake: "history"` is read again (ladder wall time).
HISTORY_REFRESH_S = 3600.0


class BurstHistory(Protocol):
    """Past usage for predictive pre-warm, read off the loop."""

    async def active_hours(
        self, deployments: Sequence[str], since: datetime
    ) -> dict[str, list[datetime]]:
        """Per deployment, the starts (UTC) of the hours since `since` with a request."""
        ...


class Sleeper(Protocol):
    """Puts a worker to sleep and wakes it; raises when the engine refuses."""

    async def sleep(self, handle: WorkerHandle, mode: SleepMode) -> None: ...

    async def wake(self, handle: WorkerHandle, mode: SleepMode) -> None: ...


def can_freeze(handle: WorkerHandle) -> bool:
    """A process group on this host (local runtime workers lead their own group)."""
    return handle.node == "local" and handle.pid is not None


def can_sleep(w: Worker) -> bool:
    """An engine that can sleep, and for a freeze, a process this host can signal (a Ray
    actor or a remote worker skips the rung and stops at idle_timeout_s)."""
    mode, handle = w.sleep_mode, w.handle
    if mode is None or handle is None:
        return False
    return mode.kind != "freeze" or can_freeze(handle)


class EngineSleeper:
    """The engines' own calls over HTTP (loopback or the worker's node), or SIGSTOP/SIGCONT
    of a local worker's process group."""

    async def sleep(self, handle: WorkerHandle, mode: SleepMode) -> None:
        if mode.kind == "freeze":
            self._signal(handle, signal.SIGSTOP)
        else:
            await self._calls(handle, mode.sleep_calls)

    async def wake(self, handle: WorkerHandle, mode: SleepMode) -> None:
        if mode.kind == "freeze":
            self._signal(handle, signal.SIGCONT)
        else:
            await self._calls(handle, mode.wake_calls)

    @staticmethod
    def _signal(handle: WorkerHandle, sig: signal.Signals) -> None:
        if not can_freeze(handle):
            raise RuntimeError("only a local worker process can be frozen")
        assert handle.pid is not None
        os.killpg(handle.pid, sig)

    @staticmethod
    async def _calls(handle: WorkerHandle, calls: tuple[HttpCall, ...]) -> None:
        timeout = aiohttp.ClientTimeout(total=CONTROL_CALL_TIMEOUT_S, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for call in calls:
                async with session.request(
                    call.method, handle.url + call.path, json=call.body
                ) as resp:
                    if resp.status >= 400:
                        text = (await resp.text())[:200]
                        raise RuntimeError(f"{call} answered {resp.status}: {text}")


@dataclass(frozen=True)
class LadderStep:
    """What the autoscaler gets from the ladder for one deployment."""

    # min_workers as raised by open schedule windows.
    min_workers: int
    # Extra demand standing for buffer_workers (in requests).
    extra_demand: int
    wake_at: float | None


def idle_since(dep: Deployment, w: Worker) -> float | None:
    """When the worker last finished a request, became ready or woke; None while starting."""
    if w.ready_mono is None:
        return None
    return max(w.ready_mono, dep.gate.last_release.get(w.id, 0.0), w.woke_mono or 0.0)


class LadderOps:
    def __init__(
        self,
        ctl: Controller,
        gpus: GpuPool,
        sleeper: Sleeper | None = None,
        wall: Callable[[], datetime] | None = None,
        history: BurstHistory | None = None,
    ):
        self.ctl = ctl
        self.gpus = gpus
        self.sleeper: Sleeper = sleeper or EngineSleeper()
        self.wall = wall or utcnow
        self.history = history
        # When each deployment's bursts began (prewake "history"), as last read, and when
        # and for which deployments they were read.
        self.bursts: dict[str, list[datetime]] = {}
        self._history_read: datetime | None = None
        self._history_names: frozenset[str] = frozenset()
        self._history_busy = False

    # -- the ladder -----------------------------------------------------------------------

    def step(self, dep: Deployment, now: float) -> LadderStep:
        spec = dep.spec
        wall = self.wall()
        windows = [Window(w.cron, w.duration_s, w.min_workers) for w in spec.schedule]
        sched = schedule_state(windows, wall)
        next_change = sched.next_change
        low = max(spec.min_workers, sched.min_workers)
        if spec.prewake == "history":
            # Predictive pre-warm: one worker awake (woken, or started when cold) from a
            # little before the hour of the week in which bursts usually begin.
            self._read_history(wall)
            if history_prewake(self.bursts.get(dep.name, ()), wall):
                low = max(low, min(1, spec.max_workers))
            check = history_next_check(wall)
            next_change = check if next_change is None else min(next_change, check)
        target = awake_target(
            dep.gate.demand, spec.concurrency, low, spec.max_workers, spec.buffer_workers
        )
        target = max(target, min(sched.prewake, spec.max_workers))
        views = [
            LadderWorker(
                w.id,
                w.state,
                dep.gate.inflight.get(w.id, 0),
                idle_since(dep, w),
                can_sleep(w),
                w.transition,
                w.spec_version != dep.spec_version,
            )
            for w in dep.workers.values()
            if w.state in (WorkerState.PROVISIONING, WorkerState.HEALTHY, WorkerState.SLEEPING)
        ]
        plan = plan_ladder(
            views, LadderPolicy(spec.sleep_after_s, spec.idle_timeout_s, target), now
        )
        for wid in plan.sleep:
            self._sleep(dep, dep.workers[wid])
        for wid in plan.wake:
            self._wake(dep, dep.workers[wid], now)
        for wid, reason in plan.stop:
            self.ctl.workers.stop(dep, dep.workers[wid], WorkerState.STOPPED, reason)
        wake_at = plan.wake_at
        if next_change is not None:
            at = now + max(0.0, (next_change - wall).total_seconds())
            wake_at = at if wake_at is None else min(wake_at, at)
        return LadderStep(low, spec.buffer_workers * spec.concurrency, wake_at)

    def _read_history(self, wall: datetime) -> None:
        """Read the bursts of the deployments with prewake "history" in a task when the
        last read is older than HISTORY_REFRESH_S or missed one of them; the result comes
        back through the inbox."""
        names = frozenset(
            d.name for d in self.ctl.deployments.values() if d.spec.prewake == "history"
        )
        read = self._history_read
        fresh = read is not None and (wall - read).total_seconds() < HISTORY_REFRESH_S
        if self.history is None or self._history_busy or (fresh and names <= self._history_names):
            return
        self._history_busy = True
        source, since = self.history, wall - timedelta(seconds=WEEK_S * (HISTORY_WEEKS + 1))

        async def run() -> None:
            bursts: dict[str, list[datetime]] | None = None
            try:
                hours = await source.active_hours(sorted(names), since)
                bursts = {name: burst_starts(h) for name, h in hours.items()}
            except Exception:
                log.exception("reading the usage history for pre-warm failed")

            async def done() -> None:
                # After a failure too: tried again once the refresh interval has passed.
                self._history_busy, self._history_read = False, wall
                self._history_names = names
                if bursts is not None:
                    self.bursts = bursts
                self.ctl.wake()

            self.ctl.post(done)

        self.ctl.workers.spawn(run())

    def _sleep(self, dep: Deployment, w: Worker) -> None:
        assert w.sleep_mode is not None and w.handle is not None
        w.state, w.dirty = check_worker(w.state, WorkerState.SLEEPING), True
        w.transition = Transition.TO_SLEEP
        w.asleep_mono = self.ctl.clock()
        self._bill(w, asleep=True)
        dep.gate.remove_route(w.id)
        self.ctl.workers.publish_routes(dep)
        mode, handle = w.sleep_mode, w.handle
        self.ctl.event(dep, "worker", "sleeping", f"{w.id}: idle, {mode.frees} freed")
        self._spawn(dep, w, self.sleeper.sleep(handle, mode), self._slept)

    def _wake(self, dep: Deployment, w: Worker, now: float) -> None:
        if w.transition is Transition.TO_SLEEP:
            w.wake_after = True  # woken as soon as its sleep call returns
            return
        assert w.sleep_mode is not None and w.handle is not None
        w.transition, w.wake_started = Transition.TO_WAKE, now
        self._bill(w, asleep=False)  # reloading onto its devices: the full rate again
        self._spawn(dep, w, self.sleeper.wake(w.handle, w.sleep_mode), self._woke)

    def _bill(self, w: Worker, asleep: bool) -> None:
        meter = self.ctl.workers.meter
        if meter is not None:
            meter.worker_slept(w.id, utcnow(), asleep)

    def _spawn(
        self,
        dep: Deployment,
        w: Worker,
        call: Any,
        done: Callable[[Deployment, Worker, BaseException | None], Any],
    ) -> None:
        async def run() -> None:
            error: BaseException | None = None
            try:
                await call
            except Exception as exc:
                error = exc
            self.ctl.post(lambda: done(dep, w, error))

        self.ctl.workers.spawn(run())

    async def _slept(self, dep: Deployment, w: Worker, error: BaseException | None) -> None:
        w.transition = Transition.NONE
        if w.state is not WorkerState.SLEEPING:
            return  # stopped meanwhile
        w.frozen = error is None and w.sleep_mode is not None and w.sleep_mode.kind == "freeze"
        if error is not None:
            self.ctl.workers.stop(dep, w, WorkerState.FAILED, f"cannot sleep: {error}")
            return
        if w.wake_after:
            w.wake_after = False
            self._wake(dep, w, self.ctl.clock())
        self.ctl.wake()

    async def _woke(self, dep: Deployment, w: Worker, error: BaseException | None) -> None:
        w.transition = Transition.NONE
        if w.state is not WorkerState.SLEEPING:
            return
        if error is not None:
            self.ctl.workers.stop(dep, w, WorkerState.FAILED, f"cannot wake: {error}")
            return
        now = self.ctl.clock()
        w.frozen = False
        w.state, w.dirty = check_worker(w.state, WorkerState.HEALTHY), True
        w.woke_mono = now
        w.wakes += 1
        w.last_wake_s = now - (w.wake_started or now)
        dep.wake_seconds.append(w.last_wake_s)
        dep.wakes += 1
        self.ctl.workers.publish_routes(dep)
        self.ctl.event(dep, "worker", "healthy", f"{w.id} woke in {w.last_wake_s * 1000:.0f} ms")
        self.ctl.wake()

    def thaw(self, w: Worker) -> None:
        """A frozen worker is continued before it is stopped (a stopped process group
        would hold SIGTERM pending until its grace ran out)."""
        if w.frozen and w.handle is not None and can_freeze(w.handle):
            w.frozen = False
            try:
                assert w.handle.pid is not None
                os.killpg(w.handle.pid, signal.SIGCONT)
            except OSError:
                pass

    # -- GPU residency --------------------------------------------------------------------

    def evict_for(self, dep: Deployment, short: int) -> bool:
        """Devices are missing for `short` workers of `dep`: stop sleeping, then idle
        lower-priority workers of other deployments to free them. True while devices are
        coming free for it (evicted now or earlier and not yet released)."""
        spec = dep.spec
        if spec.gpus == 0 or self.ctl.runtime.assigns_devices:
            return False

        def fits(worker_id: str) -> int:
            return sum(
                1
                for d in self.gpus.devices_of(worker_id)
                if d.kind == spec.accelerator
                and (spec.gpu_type is None or matches_model(d.model, spec.gpu_type))
            )

        freeing = 0
        residents: list[Resident] = []
        for other in self.ctl.deployments.values():
            live = [w for w in other.workers.values() if w.live]
            spare = len(live) - other.spec.min_workers
            for w in other.workers.values():
                if not w.live:
                    freeing += fits(w.id)  # stopped, devices not yet given back
                    continue
                if w.transition is not Transition.NONE or w.state not in (
                    WorkerState.HEALTHY,
                    WorkerState.SLEEPING,
                ):
                    continue
                residents.append(
                    Resident(
                        w.id,
                        other.name,
                        w.state,
                        other.gate.inflight.get(w.id, 0),
                        other.spec.priority,
                        idle_since(other, w),
                        fits(w.id),
                        spare,
                    )
                )
        needed = short * spec.gpus - freeing - len(self.gpus.free(spec.accelerator, spec.gpu_type))
        if needed <= 0:
            return freeing > 0
        victims = pick_evictions(residents, needed, spec.priority, dep.name)
        for wid in victims:
            owner = self.ctl.deployments[wid_owner(residents, wid)]
            victim = owner.workers[wid]
            self.ctl.workers.stop(
                owner, victim, WorkerState.STOPPED, f"evicted for {dep.name} (GPU pressure)"
            )
        return bool(victims) or freeing > 0


def wid_owner(residents: list[Resident], worker_id: str) -> str:
    return next(r.deployment for r in residents if r.worker_id == worker_id)
