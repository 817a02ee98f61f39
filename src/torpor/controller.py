"""The controller: the single owner of deployment and worker state.

One asyncio loop takes a snapshot, asks the pure decision functions (autoscaler, restart
backoff) what to do, applies the decisions through the runtime, publishes routable workers
to admission and writes state to the store. API handlers call its methods on the same loop,
so no locks are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from torpor.admission import Admission, DeploymentGate, Route
from torpor.autoscaler import ScalingView, WorkerView, plan_scaling, restart_backoff
from torpor.engines import engine_for
from torpor.errors import Conflict, DeploymentUnavailable, NoCapacity, NotFound, UpstreamError
from torpor.gpus import VISIBLE_DEVICES_ENV, GpuPool
from torpor.logs import tail_lines
from torpor.models import ModelError
from torpor.modelstore import DownloadProgress, ModelStore
from torpor.runtime import LaunchSpec, Runtime, WorkerHandle
from torpor.settings import Settings
from torpor.spec import DeploymentPatch, DeploymentSpec, needs_rollout
from torpor.states import (
    LIVE_WORKER_STATES,
    TERMINAL_WORKER_STATES,
    ServingStatus,
    SetupState,
    WorkerState,
    check_setup,
    check_worker,
    serving_status,
)
from torpor.store import Store
from torpor.store.db import utcnow
from torpor.store.tables import DeploymentRow, WorkerRow

log = logging.getLogger(__name__)

# Terminated workers kept in memory per deployment, for the API and the logs.
KEEP_TERMINATED = 10
LOG_TAIL_LINES = 20


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
    ready_at: datetime | None = None
    ready_mono: float | None = None
    stopped_at: datetime | None = None
    reason: str | None = None
    exit_code: int | None = None
    dirty: bool = True

    @property
    def live(self) -> bool:
        return self.state not in TERMINAL_WORKER_STATES


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
    desired: int = 0
    workers: dict[str, Worker] = field(default_factory=dict)
    setup_task: asyncio.Task[None] | None = None

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
        self._stopping: set[asyncio.Task[None]] = set()
        self._pending_events: list[dict[str, Any]] = []
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    async def load(self) -> int:
        """Stop orphans of an earlier run, then load deployments. Returns orphans stopped."""
        orphans = 0
        stale = []
        for row in await self.store.live_workers():
            if row.pid is not None and await self.runtime.stop_orphan(
                row.id, row.pid, row.pid_create_time or 0.0
            ):
                orphans += 1
            row.state = WorkerState.STOPPED.value
            row.reason = "torpor restarted"
            row.stopped_at = utcnow()
            stale.append(row)
        await self.store.save_workers(stale)
        for drow in await self.store.list_deployments():
            spec = DeploymentSpec.model_validate(drow.spec)
            dep = self._new_deployment(spec, drow.spec_version, drow.created_at)
            dep.updated_at = drow.updated_at
            if drow.state in (SetupState.DELETING, SetupState.CLEANING):
                await self.delete(spec.name)
                continue
            self._begin_setup(dep)
        return orphans

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
        for dep in self.deployments.values():
            if dep.setup_task is not None:
                dep.setup_task.cancel()
            self.admission.close(dep.name, DeploymentUnavailable("torpor is shutting down"))
            for w in dep.live_workers():
                self._stop_worker(dep, w, WorkerState.STOPPED, "torpor shut down")
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        await self._persist()

    # -- API operations -------------------------------------------------------------------

    async def create(self, spec: DeploymentSpec) -> Deployment:
        if spec.name in self.deployments:
            raise Conflict(f"Deployment {spec.name!r} already exists")
        dep = self._new_deployment(spec, 1, utcnow())
        await self._save_deployment(dep)
        self._begin_setup(dep)
        return dep

    def get(self, name: str) -> Deployment:
        dep = self.deployments.get(name)
        if dep is None:
            raise NotFound(f"Deployment {name!r} not found")
        return dep

    async def update(self, name: str, patch: DeploymentPatch) -> Deployment:
        dep = self.get(name)
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
                self._begin_setup(dep)
            self._event(dep, "spec", f"v{dep.spec_version}", "spec changed: rolling workers")
        self._publish_routes(dep)
        await self._save_deployment(dep)
        self.wake()
        return dep

    async def delete(self, name: str) -> None:
        dep = self.get(name)
        if dep.setup_task is not None:
            dep.setup_task.cancel()
        await self._set_state(dep, SetupState.DELETING)
        self.admission.close(name, DeploymentUnavailable(f"Deployment {name!r} was deleted"))
        tasks = [
            self._stop_worker(dep, w, WorkerState.STOPPED, "deleted") for w in dep.live_workers()
        ]
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._set_state(dep, SetupState.CLEANING)
        await asyncio.to_thread(shutil.rmtree, self._dir(name), True)
        await self._set_state(dep, SetupState.DELETED)
        del self.deployments[name]
        await self.store.delete_deployment(name)

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

    # -- setup pipeline -------------------------------------------------------------------

    def _begin_setup(self, dep: Deployment) -> None:
        if dep.setup_task is not None and not dep.setup_task.done():
            dep.setup_task.cancel()
        dep.setup_task = asyncio.create_task(self._setup(dep), name=f"setup-{dep.name}")

    async def _setup(self, dep: Deployment) -> None:
        try:
            # Recorded on every run of the pipeline, the first one included.
            await self._set_state(dep, SetupState.STARTING)
            await asyncio.to_thread(self.worker_dir(dep.name).mkdir, parents=True, exist_ok=True)
            await self._set_state(dep, SetupState.FILESYSTEM_CREATED)
            await self._set_state(dep, SetupState.DOWNLOADING_MODEL)
            spec = dep.spec
            dep.download = None

            def on_progress(progress: DownloadProgress) -> None:
                dep.download = progress

            fetched = await ModelStore().fetch(
                spec, engine_for(spec.framework).needs_model(spec), self._dir(dep.name), on_progress
            )
            dep.model_path, dep.model_size_bytes = fetched.path, fetched.size_bytes
            if fetched.downloaded:
                what = f"{fetched.source.kind.value} {fetched.source.ref}"
                self._event(dep, "model", "stored", f"{what}: {fetched.size_bytes} bytes")
            await self._set_state(dep, SetupState.MODEL_DOWNLOADED)
            await self._set_state(dep, SetupState.RUNNING)
            dep.gate.blocked = None
            self.wake()
        except asyncio.CancelledError:
            raise
        except (ModelError, OSError) as exc:
            await self._fail_setup(dep, str(exc))
        except Exception as exc:
            log.exception("setup of %s failed", dep.name)
            await self._fail_setup(dep, f"setup failed: {exc}")

    async def _fail_setup(self, dep: Deployment, reason: str) -> None:
        await self._set_state(dep, SetupState.FAILED, reason)
        error = DeploymentUnavailable(
            f"Deployment not found or not running: deployment {dep.name!r} failed: {reason}"
        )
        dep.gate.blocked = error
        dep.gate.fail_waiters(error)
        for w in dep.live_workers():
            self._stop_worker(dep, w, WorkerState.STOPPED, "setup failed")

    async def _set_state(
        self, dep: Deployment, state: SetupState, reason: str | None = None
    ) -> None:
        dep.state = check_setup(dep.state, state) if dep.state is not state else state
        dep.reason = reason
        dep.updated_at = utcnow()
        self._event(dep, "setup", state.value, reason or "")
        await self._flush_events()  # setup steps are visible in /events at once
        await self._save_deployment(dep)

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closed:
            self._wake.clear()
            wake_at: float | None = None
            try:
                wake_at = await self.tick()
            except Exception:
                log.exception("controller cycle failed")
            now = self.clock()
            provisioning = any(
                w.state is WorkerState.PROVISIONING
                for d in self.deployments.values()
                for w in d.workers.values()
            )
            delay = (
                self.settings.probe_interval_s
                if provisioning
                else self.settings.controller_idle_tick_s
            )
            if wake_at is not None:
                delay = min(delay, max(0.0, wake_at - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def tick(self) -> float | None:
        """One cycle: observe workers, decide, apply, publish, persist. Returns the next
        instant a decision would change by itself."""
        now = self.clock()
        await self._observe(now)
        wake_at: float | None = None
        for dep in list(self.deployments.values()):
            if dep.state is not SetupState.RUNNING:
                continue
            at = await self._reconcile(dep, now)
            if at is not None:
                wake_at = at if wake_at is None else min(wake_at, at)
        await self._persist()
        return wake_at

    async def _observe(self, now: float) -> None:
        probes: list[tuple[Deployment, Worker, WorkerHandle]] = []
        for dep in self.deployments.values():
            for w in dep.live_workers():
                if w.handle is None:
                    continue
                code = self.runtime.poll(w.handle)
                if code is not None:
                    self._worker_failed(dep, w, code, now)
                elif w.state is WorkerState.PROVISIONING:
                    probes.append((dep, w, w.handle))
        if not probes:
            return
        results = await asyncio.gather(*(self.runtime.probe(h) for _, _, h in probes))
        for (dep, w, _), result in zip(probes, results, strict=True):
            if w.state is not WorkerState.PROVISIONING:
                continue  # changed while probing
            if result.exited:
                self._worker_failed(dep, w, result.exit_code, self.clock())
            elif result.ready:
                self._worker_ready(dep, w)
            elif now - w.started_mono > self.settings.worker_start_timeout_s:
                timeout = self.settings.worker_start_timeout_s
                self._stop_worker(dep, w, WorkerState.FAILED, f"not ready after {timeout:.0f}s")
                self._count_failure(dep, w, None, now)

    async def _reconcile(self, dep: Deployment, now: float) -> float | None:
        gate = dep.gate
        spec = dep.spec
        views = []
        for w in dep.workers.values():
            if w.state not in (WorkerState.PROVISIONING, WorkerState.HEALTHY, WorkerState.DRAINING):
                continue
            inflight = gate.inflight.get(w.id, 0)
            idle_since = None
            if inflight == 0 and w.ready_mono is not None:
                idle_since = max(w.ready_mono, gate.last_release.get(w.id, 0.0))
            views.append(WorkerView(w.id, w.state, w.spec_version, inflight, idle_since))
        plan = plan_scaling(
            ScalingView(
                spec_version=dep.spec_version,
                min_workers=spec.min_workers,
                max_workers=spec.max_workers,
                concurrency=spec.concurrency,
                idle_timeout_s=spec.idle_timeout_s,
                demand=gate.demand,
                workers=tuple(views),
                start_not_before=dep.start_not_before,
            ),
            now,
        )
        dep.desired = plan.desired
        # Stops and drains first, with no await in between: a worker picked as idle cannot
        # receive a request before it leaves the routing table.
        for worker_id, reason in plan.stop:
            self._stop_worker(dep, dep.workers[worker_id], WorkerState.STOPPED, reason)
        for worker_id in plan.drain:
            w = dep.workers[worker_id]
            w.state, w.dirty = check_worker(w.state, WorkerState.DRAINING), True
            w.reason = "replaced by a worker of the new spec"
        for worker_id in plan.finish_drain:
            self._stop_worker(
                dep, dep.workers[worker_id], WorkerState.STOPPED, "drained after spec change"
            )
        self._publish_routes(dep)
        dep.waiting_for_gpus = False
        for _ in range(plan.start):
            if not await self._start_worker(dep, now):
                break
        gate.starting = any(w.state is WorkerState.PROVISIONING for w in dep.workers.values())
        if self._crash_looping(dep) and gate.waiting and not gate.routes:
            gate.fail_waiters(self._crash_error(dep))
        return plan.wake_at

    # -- applying decisions ---------------------------------------------------------------

    async def _start_worker(self, dep: Deployment, now: float) -> bool:
        spec = dep.spec
        worker_id = f"{spec.name}-{secrets.token_hex(3)}"
        gpu_ids = self.gpus.allocate(worker_id, spec.gpus, spec.accelerator)
        if gpu_ids is None:
            dep.waiting_for_gpus = True
            dep.gate.fail_waiters(NoCapacity())
            return False
        engine = engine_for(spec.framework)
        launch = engine.launch(spec, dep.model_path)
        env = dict(spec.env)
        env.update(launch.env)
        w = Worker(
            id=worker_id,
            deployment=spec.name,
            spec_version=dep.spec_version,
            state=WorkerState.PROVISIONING,
            log_path=self.worker_dir(spec.name) / f"{worker_id}.log",
            restarts=dep.failures,
            started_at=utcnow(),
            started_mono=now,
            gpu_ids=gpu_ids,
        )
        dep.workers[worker_id] = w
        try:
            w.handle = await self.runtime.start(
                LaunchSpec(
                    worker_id=worker_id,
                    deployment=spec.name,
                    argv=launch.argv,
                    env=env,
                    health_path=launch.health_path,
                    log_path=w.log_path,
                    cwd=self._dir(spec.name),
                    fixed_port=launch.fixed_port,
                    device_env=self._device_env(gpu_ids, spec.accelerator),
                )
            )
        except OSError as exc:
            w.state, w.reason, w.stopped_at = WorkerState.FAILED, f"cannot start: {exc}", utcnow()
            self.gpus.release(worker_id)
            self._count_failure(dep, w, None, now)
            return False
        if self.meter is not None:
            held = self.gpus.devices_of(worker_id)
            kind = held[0].model if held else "cpu"
            self.meter.worker_started(worker_id, spec.name, kind, len(gpu_ids), w.started_at)
        self._event(dep, "worker", "provisioning", f"{worker_id} started (pid {w.handle.pid})")
        self._trim(dep)
        return True

    def _worker_ready(self, dep: Deployment, w: Worker) -> None:
        w.state = check_worker(w.state, WorkerState.HEALTHY)
        w.ready_at, w.ready_mono, w.dirty = utcnow(), self.clock(), True
        if self.meter is not None:
            self.meter.worker_ready(w.id, w.ready_at)
        dep.failures, dep.start_not_before = 0, 0.0
        self._publish_routes(dep)
        self._event(dep, "worker", "healthy", f"{w.id} ready")

    def _worker_failed(self, dep: Deployment, w: Worker, code: int | None, now: float) -> None:
        was = "before it was ready" if w.state is WorkerState.PROVISIONING else "unexpectedly"
        self._stop_worker(dep, w, WorkerState.FAILED, f"exited with code {code} {was}")
        w.exit_code = code
        self._count_failure(dep, w, code, now)

    def _count_failure(self, dep: Deployment, w: Worker, code: int | None, now: float) -> None:
        dep.failures += 1
        s = self.settings
        dep.start_not_before = now + restart_backoff(
            dep.failures, s.restart_backoff_base_s, s.restart_backoff_max_s
        )
        dep.last_error = {
            "worker": w.id,
            "exit_code": code,
            "reason": w.reason,
            "at": utcnow().isoformat(),
            "log_tail": tail_lines(w.log_path, LOG_TAIL_LINES),
        }
        if self._crash_looping(dep) and not dep.gate.routes:
            dep.gate.fail_waiters(self._crash_error(dep))
        self._event(dep, "worker", "failed", f"{w.id}: {w.reason}")

    def _stop_worker(
        self, dep: Deployment, w: Worker, state: WorkerState, reason: str
    ) -> asyncio.Task[None]:
        """Leave routing now; the process is stopped in the background (SIGTERM, grace,
        SIGKILL) and its devices are released when it is gone."""
        w.state = check_worker(w.state, state)
        w.reason, w.stopped_at, w.dirty = reason, utcnow(), True
        if self.meter is not None:
            self.meter.worker_stopped(w.id, w.stopped_at, reason)
        dep.gate.remove_route(w.id)
        handle, w.handle = w.handle, None
        task = asyncio.create_task(self._terminate(w, handle))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        if state is WorkerState.STOPPED:
            self._event(dep, "worker", "stopped", f"{w.id}: {reason}")
        return task

    async def _terminate(self, w: Worker, handle: WorkerHandle | None) -> None:
        try:
            if handle is not None:
                await self.runtime.stop(handle, self.settings.worker_stop_grace_s)
        finally:
            self.gpus.release(w.id)

    def _device_env(self, gpu_ids: list[int], kind: str) -> dict[str, str]:
        if gpu_ids:
            return self.gpus.env_for(gpu_ids, kind)
        # A CPU worker must not see (and grab) the host's accelerators.
        return {var: "" for var in VISIBLE_DEVICES_ENV.values()}

    def _publish_routes(self, dep: Deployment) -> None:
        routes = [
            Route(w.id, w.handle.url, dep.spec.concurrency)
            for w in dep.workers.values()
            if w.state is WorkerState.HEALTHY and w.handle is not None
        ]
        dep.gate.set_routes(routes)

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
        return dep.failures >= self.settings.crash_loop_threshold

    def _crash_error(self, dep: Deployment) -> UpstreamError:
        err = dep.last_error or {}
        return UpstreamError(
            f"Worker returned an error, please retry: deployment {dep.name!r} is failing to "
            f"start workers (last exit code {err.get('exit_code')})"
        )

    def _dir(self, name: str) -> Path:
        return self.settings.deployments_dir / name

    def _trim(self, dep: Deployment) -> None:
        ended = [w for w in dep.workers.values() if not w.live and not w.dirty]
        for w in sorted(ended, key=lambda w: w.started_mono)[:-KEEP_TERMINATED]:
            del dep.workers[w.id]

    def _event(self, dep: Deployment, kind: str, state: str, message: str) -> None:
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
        await self.store.save_deployment(
            DeploymentRow(
                name=dep.name,
                spec=dep.spec.model_dump(mode="json"),
                spec_version=dep.spec_version,
                state=dep.state.value,
                reason=dep.reason,
                model_path=str(dep.model_path) if dep.model_path else None,
                created_at=dep.created_at,
                updated_at=dep.updated_at,
            )
        )

    async def _persist(self) -> None:
        rows = []
        for dep in self.deployments.values():
            for w in dep.workers.values():
                if w.dirty:
                    w.dirty = False
                    rows.append(_worker_row(w))
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


def _worker_row(w: Worker) -> WorkerRow:
    h = w.handle
    return WorkerRow(
        id=w.id,
        deployment=w.deployment,
        state=w.state.value,
        spec_version=w.spec_version,
        pid=h.pid if h else None,
        pid_create_time=h.create_time if h else None,
        port=h.port if h else None,
        restarts=w.restarts,
        reason=w.reason,
        exit_code=w.exit_code,
        log_path=str(w.log_path),
        gpu_ids=w.gpu_ids,
        started_at=w.started_at,
        ready_at=w.ready_at,
        stopped_at=w.stopped_at,
    )


__all__ = ["LIVE_WORKER_STATES", "Controller", "Deployment", "Worker"]
