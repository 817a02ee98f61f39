"""Applying the controller's decisions to workers: start, ready, stop, failures, routes.

Runs on the controller's loop. The runtime's slow parts (a start, a stop) run as tasks
whose results come back through the controller's inbox, so the loop never waits on them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torpor.admission import Route
from torpor.autoscaler import restart_backoff
from torpor.controller.model import Deployment, Worker, WorkerMeter
from torpor.engines import engine_for
from torpor.engines.function import node_image, with_python
from torpor.functions.builder import build_on_node, node_build_args
from torpor.gpus import VISIBLE_DEVICES_ENV, GpuPool
from torpor.logs import tail_lines
from torpor.modelstore.placement import (
    Placement,
    fetch_into_node_cache,
    fetched_per_node,
    placement_for,
)
from torpor.runtime import LaunchSpec, Runtime, WorkerHandle
from torpor.runtime.base import MODEL_ON_NODE, PYTHON_ON_NODE, NodeImage, NodeModel, Resources
from torpor.spec import DeploymentSpec
from torpor.states import WorkerState, check_worker
from torpor.store.db import as_utc, utcnow
from torpor.store.tables import WorkerRow

if TYPE_CHECKING:
    from torpor.controller.core import Controller

log = logging.getLogger(__name__)

# Terminated workers kept in memory per deployment, for the API and the logs.
KEEP_TERMINATED = 10
LOG_TAIL_LINES = 20
# CPUs a worker reserves where the runtime places it (a cluster).
WORKER_CPUS = 1.0


class WorkerOps:
    def __init__(self, ctl: Controller, runtime: Runtime, gpus: GpuPool, meter: WorkerMeter | None):
        self.ctl = ctl
        self.runtime = runtime
        self.gpus = gpus
        self.meter = meter
        self.stopping: set[asyncio.Task[Any]] = set()

    # -- capacity ---------------------------------------------------------------------

    def capacity(self, spec: DeploymentSpec) -> int | None:
        """How many more workers of this spec fit now; None when nothing limits it here."""
        if self.runtime.assigns_devices or spec.gpus == 0:
            return None
        return len(self.gpus.free(spec.accelerator, spec.gpu_type)) // spec.gpus

    def freeing(self, dep: Deployment) -> bool:
        """A worker of this deployment is draining, or stopped and not yet gone: its devices
        come back soon."""
        return any(
            w.state is WorkerState.DRAINING or (not w.live and self.gpus.devices_of(w.id))
            for w in dep.workers.values()
        )

    # -- start ------------------------------------------------------------------------

    def start(self, dep: Deployment, now: float) -> bool:
        """Register a worker and start it in the background; False when no device is free."""
        spec = dep.spec
        worker_id = f"{spec.name}-{secrets.token_hex(3)}"
        device_env: dict[str, str] = {}
        gpu_ids: list[int] = []
        if not self.runtime.assigns_devices:
            got = self.gpus.allocate(worker_id, spec.gpus, spec.accelerator, spec.gpu_type)
            if got is None:
                return False
            gpu_ids = got
            if gpu_ids:
                device_env = self.gpus.env_for(gpu_ids, spec.accelerator)
            else:
                # A CPU worker must not see (and grab) the host's accelerators.
                device_env = {var: "" for var in VISIBLE_DEVICES_ENV.values()}
        engine = engine_for(spec.framework)
        s = self.ctl.settings
        needs_model = engine.needs_model(spec)
        on_node = fetched_per_node(placement_for(s.runtime, s.shared_storage), spec, needs_model)
        model_path = Path(MODEL_ON_NODE) if on_node else dep.model_path
        image = self._node_image(spec)
        launch = engine.launch(with_python(spec, PYTHON_ON_NODE) if image else spec, model_path)
        env = dict(spec.env)
        env.update(launch.env)
        w = Worker(
            id=worker_id,
            deployment=spec.name,
            spec_version=dep.spec_version,
            state=WorkerState.PROVISIONING,
            log_path=self.ctl.worker_dir(spec.name) / f"{worker_id}.log",
            restarts=dep.failures,
            started_at=utcnow(),
            started_mono=now,
            gpu_ids=gpu_ids,
            sleep_mode=launch.sleep,
        )
        dep.workers[worker_id] = w
        spec_launch = LaunchSpec(
            worker_id=worker_id,
            deployment=spec.name,
            argv=launch.argv,
            env=env,
            health_path=launch.health_path,
            log_path=w.log_path,
            cwd=self.ctl.storage_dir(spec.name),
            fixed_port=launch.fixed_port,
            device_env=device_env,
            resources=Resources(spec.gpus, spec.accelerator, spec.gpu_type, WORKER_CPUS),
            spec_version=dep.spec_version,
            model=NodeModel(fetch_into_node_cache, (spec.model_dump(mode="json"), needs_model))
            if on_node
            else None,
            image=image,
        )
        task = asyncio.create_task(self.runtime.start(spec_launch), name=f"start-{worker_id}")
        w.start_task = task
        task.add_done_callback(lambda t: self.ctl.post(lambda: self._started(dep, w, t)))
        if self.meter is not None:
            held = self.gpus.devices_of(worker_id)
            kind = held[0].model if held else (spec.gpu_type or "cpu")
            self.meter.worker_started(worker_id, spec.name, kind, spec.gpus, w.started_at)
        self._trim(dep)
        return True

    def _node_image(self, spec: DeploymentSpec) -> NodeImage | None:
        """The function image the worker's node builds for it, where workers run on other
        nodes (its recipe is read from torpor's image directory when the worker starts)."""
        s = self.ctl.settings
        image_id = node_image(spec)
        if image_id is None or placement_for(s.runtime, s.shared_storage) is Placement.HOST:
            return None
        recipe = (s.data_dir / "images", image_id, s.shared_storage)
        return NodeImage(image_id, lambda: node_build_args(*recipe), build_on_node)

    async def _started(self, dep: Deployment, w: Worker, task: asyncio.Task[WorkerHandle]) -> None:
        """The runtime's start finished (on the loop). A worker stopped meanwhile is taken
        care of by its stop, which waited for this start."""
        w.start_task = None
        if task.cancelled():
            return
        exc = task.exception()
        if not w.live:
            return
        if exc is not None:
            self.stop(dep, w, WorkerState.FAILED, f"cannot start: {exc}")
            await self.count_failure(dep, w, None, self.ctl.clock())
            return
        handle = task.result()
        w.handle, w.last_handle, w.dirty = handle, handle, True
        if handle.gpu_ids:
            w.gpu_ids = list(handle.gpu_ids)
        where = f"pid {handle.pid}" if handle.pid is not None else f"node {handle.node}"
        self.ctl.event(dep, "worker", "provisioning", f"{w.id} started ({where})")

    def adopt(self, dep: Deployment, row: WorkerRow, handle: WorkerHandle) -> None:
        """A worker of an earlier run, still serving: it is ours again, on the sleep/wake
        ladder like the others (its engine's sleep mode; asleep still if it slept)."""
        now = self.ctl.clock()
        try:
            sleep_mode = engine_for(dep.spec.framework).launch(dep.spec, dep.model_path).sleep
        except Exception as exc:  # a launch that cannot be described: it just never sleeps
            log.warning("adopted worker %s: no sleep mode (%s)", row.id, exc)
            sleep_mode = None
        asleep = row.state == WorkerState.SLEEPING.value and sleep_mode is not None
        w = Worker(
            id=row.id,
            deployment=dep.name,
            spec_version=row.spec_version,
            state=WorkerState.SLEEPING if asleep else WorkerState.HEALTHY,
            log_path=handle.log_path,
            restarts=row.restarts,
            started_at=as_utc(row.started_at) or utcnow(),
            started_mono=now,
            gpu_ids=list(handle.gpu_ids or row.gpu_ids),
            handle=handle,
            last_handle=handle,
            ready_at=as_utc(row.ready_at) or utcnow(),
            ready_mono=now,
            reason="adopted after a restart of torpor",
            sleep_mode=sleep_mode,
        )
        if asleep:
            w.asleep_mono = now
            w.frozen = sleep_mode is not None and sleep_mode.kind == "freeze"
        dep.workers[w.id] = w
        if not self.runtime.assigns_devices and w.gpu_ids:
            self.gpus.claim(w.id, w.gpu_ids, dep.spec.accelerator)
        if self.meter is not None:
            self.meter.worker_started(
                w.id, dep.name, dep.spec.gpu_type or "gpu", dep.spec.gpus, w.started_at
            )
            self.meter.worker_ready(w.id, w.ready_at or utcnow())
            if asleep:
                self.meter.worker_slept(w.id, utcnow())
        self.ctl.event(dep, "worker", w.state.value, f"{w.id} adopted (node {handle.node})")

    # -- ready, failed, stopped ---------------------------------------------------------

    def ready(self, dep: Deployment, w: Worker) -> None:
        w.state = check_worker(w.state, WorkerState.HEALTHY)
        w.ready_at, w.ready_mono, w.dirty = utcnow(), self.ctl.clock(), True
        w.reason = None
        if self.meter is not None:
            self.meter.worker_ready(w.id, w.ready_at)
        dep.failures, dep.start_not_before = 0, 0.0
        self.publish_routes(dep)
        self.ctl.event(dep, "worker", "healthy", f"{w.id} ready")

    async def count_failure(self, dep: Deployment, w: Worker, code: int | None, now: float) -> None:
        dep.failures += 1
        s = self.ctl.settings
        dep.start_not_before = now + restart_backoff(
            dep.failures, s.restart_backoff_base_s, s.restart_backoff_max_s
        )
        tail = await asyncio.to_thread(tail_lines, w.log_path, LOG_TAIL_LINES)
        dep.last_error = {
            "worker": w.id,
            "exit_code": code,
            "reason": w.reason,
            "at": utcnow().isoformat(),
            "log_tail": tail,
        }
        if self.ctl._crash_looping(dep) and not dep.gate.routes:
            dep.gate.fail_waiters(self.ctl.crash_error(dep))
        self.ctl.event(dep, "worker", "failed", f"{w.id}: {w.reason}")

    def stop(
        self, dep: Deployment, w: Worker, state: WorkerState, reason: str
    ) -> asyncio.Task[Any]:
        """Leave routing now; the worker is stopped in the background (after its start, if
        that is still under way) and its devices are released when it is gone."""
        w.state = check_worker(w.state, state)
        w.reason, w.stopped_at, w.dirty = reason, utcnow(), True
        w.pending = False
        if self.meter is not None:
            self.meter.worker_stopped(w.id, w.stopped_at, reason)
        dep.gate.remove_route(w.id)
        self.ctl.ladder.thaw(w)  # a frozen process must run to take SIGTERM
        handle, w.handle = w.handle, None
        task = self.spawn(self._terminate(w, handle, w.start_task))
        if state is WorkerState.STOPPED:
            self.ctl.event(dep, "worker", "stopped", f"{w.id}: {reason}")
        return task

    async def _terminate(
        self, w: Worker, handle: WorkerHandle | None, starting: asyncio.Task[WorkerHandle] | None
    ) -> None:
        started: WorkerHandle | None = None
        try:
            if handle is None and starting is not None:
                try:
                    handle = started = await asyncio.shield(starting)
                except Exception:
                    handle = None
            if handle is not None:
                await self.runtime.stop(handle, self.ctl.settings.worker_stop_grace_s)
        finally:

            def stopped() -> None:
                if started is not None:
                    w.last_handle = started
                self.gpus.release(w.id)

            if self.ctl.closed:
                stopped()  # shutdown awaits these stops; no loop runs any more
            else:

                async def report() -> None:
                    stopped()

                # Applied by the loop, which owns worker state and the device pool; the
                # post wakes it, so a start waiting for these devices may go now.
                self.ctl.post(report)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.stopping.add(task)
        task.add_done_callback(self.stopping.discard)
        return task

    async def wait_stopped(self) -> None:
        while self.stopping:
            await asyncio.gather(*list(self.stopping), return_exceptions=True)

    def publish_routes(self, dep: Deployment) -> None:
        routes = [
            Route(w.id, w.handle.url, dep.spec.concurrency, w.woke_mono, w.last_wake_s)
            for w in dep.workers.values()
            if w.state is WorkerState.HEALTHY and w.handle is not None
        ]
        dep.gate.set_routes(routes)

    def _trim(self, dep: Deployment) -> None:
        ended = [w for w in dep.workers.values() if not w.live and not w.dirty]
        for w in sorted(ended, key=lambda w: w.started_mono)[:-KEEP_TERMINATED]:
            del dep.workers[w.id]
