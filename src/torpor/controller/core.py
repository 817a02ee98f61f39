"""The controller: the single owner of deployment and worker state.

One asyncio loop owns every deployment and worker. API calls are commands: a handler puts
one in the loop's inbox and awaits its result; the loop runs commands in order, between
cycles. Background work (a runtime's start, the setup job, a worker's stop) never touches
state: it posts its result to the inbox, and the loop applies it. A cycle takes a
snapshot, asks the pure decision functions (`pipeline.plan_setup`, `health.judge`,
`autoscaler.plan_scaling`) what to do, applies the decisions through the runtime,
publishes routable workers to admission and writes state to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from torpor.admission import Admission
from torpor.autoscaler import ScalingView, WorkerView, plan_scaling
from torpor.controller.model import Deployment, Worker, WorkerMeter
from torpor.controller.persist import deployment_row, worker_row
from torpor.controller.sleep import BurstHistory, LadderOps
from torpor.controller.sleep import idle_since as ladder_idle_since
from torpor.controller.suspects import SuspectChecks
from torpor.controller.workers import WorkerOps
from torpor.errors import Conflict, DeploymentUnavailable, NoCapacity, NotFound, UpstreamError
from torpor.gpus import GpuPool
from torpor.health import HealthView, Verdict, crash_looping, judge
from torpor.ladder import Transition
from torpor.loops import tick_forever
from torpor.pipeline import SETUP_STATES, JobState, SetupFacts, plan_setup
from torpor.runtime import Runtime, WorkerHandle
from torpor.runtime.base import WorkerRecord
from torpor.settings import Settings
from torpor.setupjob import run_setup_job
from torpor.spec import DeploymentPatch, DeploymentSpec, load_stored_spec, needs_rollout
from torpor.states import (
    ServingStatus,
    SetupState,
    WorkerState,
    check_setup,
    check_worker,
    serving_status,
)
from torpor.store import Store
from torpor.store.db import utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[[], Awaitable[Any]]
_DELETING = (SetupState.DELETING, SetupState.CLEANING, SetupState.DELETED)


class Controller:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        runtime: Runtime,
        admission: Admission,
        gpus: GpuPool,
        clock: Callable[[], float],
        meter: WorkerMeter | None = None,
        history: BurstHistory | None = None,
        wall: Callable[[], datetime] | None = None,
    ):
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self.admission = admission
        self.gpus = gpus
        self.clock = clock
        self.meter = meter
        self.deployments: dict[str, Deployment] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._inbox: deque[tuple[Op, asyncio.Future[Any] | None]] = deque()
        self._pending_events: list[dict[str, Any]] = []
        self._closed = False
        self.workers = WorkerOps(self, runtime, gpus, meter)
        # The sleep/wake ladder, schedules and GPU residency (controller.sleep).
        self.ladder = LadderOps(self, gpus, wall=wall, history=history)
        # Workers that let a request time out, checked by health probes (gateway reports).
        self.suspects = SuspectChecks(self)
        # Stop tasks in flight (the bench waits on them).
        self._stopping = self.workers.stopping

    # -- lifecycle ------------------------------------------------------------------------

    async def load(self) -> int:
        """Load deployments; adopt the workers of an earlier run the runtime can take over
        and stop the others. Returns the number of earlier workers stopped."""
        for drow in await self.store.list_deployments():
            spec, notes = load_stored_spec(drow.spec)
            for note in notes:
                log.warning("deployment %s: %s; reset to the default", drow.name, note)
            dep = self._new_deployment(spec, drow.spec_version, drow.created_at)
            dep.updated_at = drow.updated_at
            if drow.state in (SetupState.DELETING, SetupState.CLEANING):
                await self._delete_now(spec.name)
        rows = await self.store.live_workers()
        records = [
            WorkerRecord(
                worker_id=r.id,
                deployment=r.deployment,
                spec_version=r.spec_version,
                pid=r.pid,
                create_time=r.pid_create_time,
                port=r.port,
                log_path=Path(r.log_path),
            )
            for r in rows
        ]
        found = {h.worker_id: h for h in await self.runtime.orphans(records)}
        stopped, stale = 0, []
        for row in rows:
            handle = found.pop(row.id, None)
            owner = self.deployments.get(row.deployment)
            usable = (
                owner is not None
                and owner.state not in _DELETING
                and row.spec_version == owner.spec_version
            )
            if (
                handle is not None
                and owner is not None
                and usable
                and await self.runtime.adopt(handle)
            ):
                self.workers.adopt(owner, row, handle)
                continue
            if handle is not None:
                await self.runtime.stop(handle, self.settings.worker_stop_grace_s)
                stopped += 1
            row.state, row.reason, row.stopped_at = "stopped", "torpor restarted", utcnow()
            stale.append(row)
        for handle in found.values():  # listed by the runtime, unknown to the store
            await self.runtime.stop(handle, self.settings.worker_stop_grace_s)
            stopped += 1
        await self.store.save_workers(stale)
        return stopped

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="torpor-controller")

    def wake(self, _deployment: str | None = None) -> None:
        self._wake.set()

    async def shutdown(self) -> None:
        """Stop the loop, then every worker; nothing this process started outlives it."""
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        while self._inbox:
            _, fut = self._inbox.popleft()
            if fut is not None and not fut.done():
                fut.set_exception(DeploymentUnavailable("torpor is shutting down"))
        for dep in self.deployments.values():
            if dep.setup_task is not None:
                dep.setup_task.cancel()
            self.admission.close(dep.name, DeploymentUnavailable("torpor is shutting down"))
            for w in dep.live_workers():
                self.workers.stop(dep, w, WorkerState.STOPPED, "torpor shut down")
        await self.workers.wait_stopped()
        await self._persist()

    # -- commands (API operations), run by the loop in order ------------------------------

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run `op` on the loop that owns the state and return its result."""
        task = self._loop_task
        if task is None or task.done() or asyncio.current_task() is task:
            return await op()  # no loop yet (start-up, tests driving tick()): run in place
        if self._closed:
            raise DeploymentUnavailable("torpor is shutting down")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inbox.append((op, fut))
        self._wake.set()
        return await fut

    @property
    def closed(self) -> bool:
        """Shutting down: the loop is gone and `shutdown` alone changes state."""
        return self._closed

    def post(self, op: Op) -> None:
        """Background work hands its result to the loop (no reply)."""
        self._inbox.append((op, None))
        self._wake.set()

    async def _drain(self) -> None:
        while self._inbox:
            op, fut = self._inbox.popleft()
            try:
                result = await op()
            except Exception as exc:
                if fut is None:
                    log.exception("controller message failed")
                elif not fut.done():
                    fut.set_exception(exc)
            else:
                if fut is not None and not fut.done():
                    fut.set_result(result)

    async def create(self, spec: DeploymentSpec) -> Deployment:
        return await self._call(lambda: self._create(spec))

    async def update(self, name: str, patch: DeploymentPatch) -> Deployment:
        return await self._call(lambda: self._update(name, patch))

    async def delete(self, name: str) -> None:
        done = await self._call(lambda: self._delete_now(name))
        await done

    def get(self, name: str) -> Deployment:
        dep = self.deployments.get(name)
        if dep is None:
            raise NotFound(f"Deployment {name!r} not found")
        return dep

    def status(self, dep: Deployment) -> ServingStatus:
        return serving_status(
            dep.state,
            [w.state for w in dep.live_workers()],
            crash_looping=self._crash_looping(dep),
            waiting_for_gpus=dep.waiting_for_gpus,
            recent_failures=dep.failures,
        )

    def storage_dir(self, name: str) -> Path:
        """Everything a deployment holds on disk (metered as storage)."""
        return self._dir(name)

    def worker_dir(self, name: str) -> Path:
        return self._dir(name) / "workers"

    async def _create(self, spec: DeploymentSpec) -> Deployment:
        if spec.name in self.deployments:
            raise Conflict(f"Deployment {spec.name!r} already exists")
        dep = self._new_deployment(spec, 1, utcnow())
        await self._save_deployment(dep)
        await self._advance_setup(dep)
        return dep

    async def _update(self, name: str, patch: DeploymentPatch) -> Deployment:
        dep = self.get(name)
        if dep.state in _DELETING:
            raise Conflict(f"Deployment {name!r} is being deleted")
        new = patch.apply(dep.spec)
        old = dep.spec
        dep.spec = new
        dep.updated_at = utcnow()
        dep.gate.max_queue, dep.gate.wait_time_s = new.max_queue, new.wait_time_s
        if needs_rollout(old, new):
            dep.spec_version += 1
            dep.failures, dep.start_not_before, dep.last_error = 0, 0.0, None
            new_model = (new.model, new.framework, new.source) != (
                old.model,
                old.framework,
                old.source,
            )
            if new_model or dep.state is SetupState.FAILED:
                # A new model goes through the setup pipeline again; the old workers keep
                # serving until new ones are ready.
                self._restart_setup(dep)
                dep.state = check_setup(dep.state, SetupState.STARTING)
                await self._advance_setup(dep)
            self.event(dep, "spec", f"v{dep.spec_version}", "spec changed: rolling workers")
        self.workers.publish_routes(dep)
        await self._save_deployment(dep)
        self.wake()
        return dep

    async def _delete_now(self, name: str) -> asyncio.Future[None]:
        """Leave routing and stop every worker now; the rest (waiting for the stops, the
        directory's removal) finishes in the background and comes back to the loop."""
        dep = self.get(name)
        if dep.deleted is not None:
            return dep.deleted
        dep.deleted = asyncio.get_running_loop().create_future()
        self._restart_setup(dep)
        await self._set_state(dep, SetupState.DELETING)
        self.admission.close(name, DeploymentUnavailable(f"Deployment {name!r} was deleted"))
        stops = [
            self.workers.stop(dep, w, WorkerState.STOPPED, "deleted") for w in dep.live_workers()
        ]
        path = self._dir(name)

        async def clean() -> None:
            await asyncio.gather(*stops, return_exceptions=True)
            await asyncio.to_thread(shutil.rmtree, path, True)
            self.post(lambda: self._finish_delete(dep))

        self.workers.spawn(clean())
        return dep.deleted

    async def _finish_delete(self, dep: Deployment) -> None:
        await self._set_state(dep, SetupState.CLEANING)
        await self._set_state(dep, SetupState.DELETED)
        if self.deployments.get(dep.name) is dep:
            del self.deployments[dep.name]
        await self.store.delete_deployment(dep.name)
        assert dep.deleted is not None
        if not dep.deleted.done():
            dep.deleted.set_result(None)

    # -- setup pipeline -------------------------------------------------------------------

    def _restart_setup(self, dep: Deployment) -> None:
        """Forget the current run's job: its results are ignored from now on."""
        if dep.setup_task is not None and not dep.setup_task.done():
            dep.setup_task.cancel()
        dep.setup_task, dep.job, dep.job_error = None, JobState.NONE, None
        dep.setup_run += 1

    async def _advance_setup(self, dep: Deployment) -> None:
        plan = plan_setup(SetupFacts(dep.state, dep.job, dep.job_error))
        if plan.start_job:
            # Recorded on every run of the pipeline, the first one included.
            await self._set_state(dep, SetupState.STARTING)
            dep.job = JobState.RUNNING
            dep.download = None
            dep.setup_task = asyncio.create_task(
                run_setup_job(self, dep, dep.setup_run), name=f"setup-{dep.name}"
            )
        for state in plan.transitions:
            if state is SetupState.FAILED:
                await self._fail_setup(dep, plan.reason or "setup failed")
                return
            await self._set_state(dep, state)
        if dep.state is SetupState.RUNNING and plan.transitions:
            dep.gate.blocked = None
            self.wake()

    def job_report(
        self, dep: Deployment, run: int, job: JobState, apply: Callable[[], None] | None = None
    ) -> None:
        """Called by the setup job (any task): its progress goes to the loop."""

        async def report() -> None:
            if dep.setup_run != run or self.deployments.get(dep.name) is not dep:
                return  # a result of an earlier run of the pipeline
            if apply is not None:
                apply()
            dep.job = job
            await self._advance_setup(dep)

        self.post(report)

    async def _fail_setup(self, dep: Deployment, reason: str) -> None:
        await self._set_state(dep, SetupState.FAILED, reason)
        error = DeploymentUnavailable(
            f"Deployment not found or not running: deployment {dep.name!r} failed: {reason}"
        )
        dep.gate.blocked = error
        dep.gate.fail_waiters(error)
        for w in dep.live_workers():
            self.workers.stop(dep, w, WorkerState.STOPPED, "setup failed")

    async def _set_state(
        self, dep: Deployment, state: SetupState, reason: str | None = None
    ) -> None:
        dep.state = check_setup(dep.state, state) if dep.state is not state else state
        dep.reason = reason
        dep.updated_at = utcnow()
        self.event(dep, "setup", state.value, reason or "")
        await self._flush_events()  # setup steps are visible in /events at once
        await self._save_deployment(dep)

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        await tick_forever(self.tick, self._wake, self._delay, "controller cycle")

    def _delay(self, wake_at: float | None) -> float:
        """Fast while a worker starts (cold starts are not padded), slow otherwise, and no
        later than the next instant a decision changes by itself."""
        provisioning = any(
            w.state is WorkerState.PROVISIONING
            for d in self.deployments.values()
            for w in d.workers.values()
        )
        s = self.settings
        delay = s.probe_interval_s if provisioning else s.controller_idle_tick_s
        if wake_at is not None:
            delay = min(delay, max(0.0, wake_at - self.clock()))
        return delay

    async def tick(self) -> float | None:
        """One cycle: run queued commands, observe workers, decide, apply, publish,
        persist. Returns the next instant a decision would change by itself."""
        await self._drain()
        now = self.clock()
        await self._observe(now)
        wake_at: float | None = None
        for dep in list(self.deployments.values()):
            if dep.state in SETUP_STATES:
                await self._advance_setup(dep)
            if dep.state is not SetupState.RUNNING:
                continue
            at = await self._reconcile(dep, now)
            if at is not None:
                wake_at = at if wake_at is None else min(wake_at, at)
        await self._persist()
        return wake_at

    async def _observe(self, now: float) -> None:
        views: dict[str, tuple[Deployment, Worker, HealthView]] = {}
        probes: list[tuple[str, WorkerHandle]] = []
        for dep in self.deployments.values():
            for w in dep.live_workers():
                h = w.handle
                if h is None:
                    if w.state is WorkerState.PROVISIONING:  # start under way: timeout only
                        views[w.id] = (dep, w, HealthView(w.id, w.state, w.started_mono))
                    continue
                code = self.runtime.poll(h)
                ended = code is not None or h.exit_reason is not None
                if not ended and w.state is not WorkerState.PROVISIONING:
                    continue  # serving and alive: nothing to judge (the common case)
                views[w.id] = (
                    dep,
                    w,
                    HealthView(w.id, w.state, w.started_mono, code, h.exit_reason, ended),
                )
                if not ended and w.state is WorkerState.PROVISIONING:
                    probes.append((w.id, h))
        if probes:
            results = await asyncio.gather(*(self.runtime.probe(h) for _, h in probes))
            for (wid, _), result in zip(probes, results, strict=True):
                dep, w, v = views[wid]
                views[wid] = (dep, w, HealthView(w.id, v.state, v.started_mono, probe=result))
        now = self.clock() if probes else now
        for dep, w, v in views.values():
            if w.state is not v.state:
                continue  # changed while probing
            verdict = judge(v, now, self.settings.worker_start_timeout_s)
            await self._apply_verdict(dep, w, verdict.verdict, verdict.reason, verdict.exit_code)

    async def _apply_verdict(
        self, dep: Deployment, w: Worker, verdict: Verdict, reason: str | None, code: int | None
    ) -> None:
        if verdict is Verdict.READY:
            w.pending = False
            if w.handle is not None and w.handle.gpu_ids:
                w.gpu_ids = list(w.handle.gpu_ids)  # assigned by the cluster
            self.workers.ready(dep, w)
        elif verdict is Verdict.PENDING:
            if not w.pending or w.reason != reason:
                w.pending, w.reason, w.dirty = True, reason, True
                self.event(dep, "worker", "pending", f"{w.id}: {reason}")
        elif verdict in (Verdict.FAILED, Verdict.TIMED_OUT):
            self.workers.stop(dep, w, WorkerState.FAILED, reason or "failed")
            w.exit_code = code
            await self.workers.count_failure(dep, w, code, self.clock())
        elif w.pending and w.state is WorkerState.PROVISIONING:
            w.pending, w.reason, w.dirty = False, reason, True  # placed: now starting

    async def _reconcile(self, dep: Deployment, now: float) -> float | None:
        gate = dep.gate
        spec = dep.spec
        # The ladder first: sleeping workers it wakes count as starting ones below.
        rung = self.ladder.step(dep, now)
        views = []
        for w in dep.workers.values():
            state = w.state
            if state is WorkerState.SLEEPING and (
                w.transition is Transition.TO_WAKE or w.wake_after
            ):
                state = WorkerState.PROVISIONING  # waking (or woken once asleep)
            if state not in (WorkerState.PROVISIONING, WorkerState.HEALTHY, WorkerState.DRAINING):
                continue
            inflight = gate.inflight.get(w.id, 0)
            idle_since = None
            if inflight == 0 and state is w.state:
                idle_since = ladder_idle_since(dep, w)
            views.append(WorkerView(w.id, state, w.spec_version, inflight, idle_since, w.pending))
        plan = plan_scaling(
            ScalingView(
                spec_version=dep.spec_version,
                min_workers=rung.min_workers,
                max_workers=spec.max_workers,
                concurrency=spec.concurrency,
                idle_timeout_s=spec.idle_timeout_s,
                demand=gate.demand + rung.extra_demand,
                workers=tuple(views),
                start_not_before=dep.start_not_before,
                capacity=self.workers.capacity(spec),
            ),
            now,
        )
        dep.desired = plan.desired
        # Stops and drains first, with no await in between: a worker picked as idle cannot
        # receive a request before it leaves the routing table.
        for worker_id, reason in plan.stop:
            self.workers.stop(dep, dep.workers[worker_id], WorkerState.STOPPED, reason)
        for worker_id in plan.drain:
            w = dep.workers[worker_id]
            w.state, w.dirty = check_worker(w.state, WorkerState.DRAINING), True
            w.reason = "replaced by a worker of the new spec"
        for worker_id in plan.finish_drain:
            self.workers.stop(
                dep, dep.workers[worker_id], WorkerState.STOPPED, "drained after spec change"
            )
        self.workers.publish_routes(dep)
        short = plan.short
        refusal = self.meter.scale_refusal(dep.name) if self.meter is not None else None
        if refusal != dep.budget_refusal and (refusal is None or plan.start):
            if refusal is not None:
                self.event(dep, "deployment", "budget_exceeded", refusal)
            dep.budget_refusal = refusal
        for _ in range(plan.start if refusal is None else 0):
            if not self.workers.start(dep, now):
                short += 1
                break
        # No device free: evict sleeping, then idle lower-priority workers elsewhere.
        evicting = short > 0 and refusal is None and self.ladder.evict_for(dep, short)
        dep.waiting_for_gpus = short > 0
        provisioning = [w for w in dep.workers.values() if w.state is WorkerState.PROVISIONING]
        gate.starting = bool(provisioning)
        # A wait that runs out while only capacity is missing is a 503, not a 504.
        gate.no_capacity = (short > 0 and not provisioning) or (
            bool(provisioning) and all(w.pending for w in provisioning)
        )
        # Queued requests fail only when no worker can serve them, nor will soon: a worker
        # draining or still stopping gives its devices back for a successor.
        stuck = short and not provisioning and not self.workers.freeing(dep) and not evicting
        if stuck and gate.waiting and not gate.routes:
            gate.fail_waiters(NoCapacity())
        if self._crash_looping(dep) and gate.waiting and not gate.routes:
            gate.fail_waiters(self.crash_error(dep))
        if rung.wake_at is not None:
            return rung.wake_at if plan.wake_at is None else min(plan.wake_at, rung.wake_at)
        return plan.wake_at

    # -- helpers --------------------------------------------------------------------------

    def _new_deployment(self, spec: DeploymentSpec, version: int, created: datetime) -> Deployment:
        gate = self.admission.open(spec.name, spec.max_queue, spec.wait_time_s)
        gate.blocked = None
        dep = Deployment(
            spec=spec,
            spec_version=version,
            state=SetupState.STARTING,
            created_at=created,
            updated_at=utcnow(),
            gate=gate,
        )
        self.deployments[spec.name] = dep
        return dep

    def _crash_looping(self, dep: Deployment) -> bool:
        return crash_looping(dep.failures, self.settings.crash_loop_threshold)

    def crash_error(self, dep: Deployment) -> UpstreamError:
        err = dep.last_error or {}
        return UpstreamError(
            f"Worker returned an error, please retry: deployment {dep.name!r} is failing to "
            f"start workers (last exit code {err.get('exit_code')})"
        )

    def _dir(self, name: str) -> Path:
        return self.settings.deployments_dir / name

    def event(self, dep: Deployment, kind: str, state: str, message: str) -> None:
        """Queued, and written with the cycle's worker rows in one transaction."""
        self._pending_events.append(
            {
                "deployment": dep.name,
                "at": utcnow(),
                "kind": kind,
                "state": state,
                "message": message,
            }
        )

    async def _flush_events(self) -> None:
        events, self._pending_events = self._pending_events, []
        if events:
            try:
                await self.store.add_events(events)
            except Exception:
                log.exception("cannot record %d deployment events", len(events))

    async def _save_deployment(self, dep: Deployment) -> None:
        await self.store.save_deployment(deployment_row(dep))

    async def _persist(self) -> None:
        rows = []
        for dep in self.deployments.values():
            for w in dep.workers.values():
                if w.dirty:
                    w.dirty = False
                    rows.append(worker_row(w))
        await self._flush_events()
        try:
            await self.store.save_workers(rows)
        except Exception:
            log.exception("cannot persist worker state")
            unsaved = {r.id for r in rows}
            for dep in self.deployments.values():
                for w in dep.workers.values():
                    if w.id in unsaved:
                        w.dirty = True
