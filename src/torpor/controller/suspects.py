"""Workers that let a request time out: checked with health probes, replaced only when they
answer nothing.

The gateway never takes a worker out of routing on a timeout alone (a long generation is
not a hang). It reports the worker here; the controller probes its health route (each probe
with the runtime's short timeout) and judges the answers with `health.judge_suspect`: a
worker that answers stays, one that fails `PROBES_TO_FAIL` probes in a row is failed and
replaced by the autoscaler like any failed worker. Probes run as tasks; their results come
back through the controller's inbox, so the loop never waits on a hung worker.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from torpor.health import SuspectVerdict, judge_suspect
from torpor.runtime.base import ProbeResult
from torpor.states import WorkerState

if TYPE_CHECKING:
    from torpor.controller.core import Controller
    from torpor.controller.model import Deployment, Worker

PROBES_TO_FAIL = 2
PROBE_INTERVAL_S = 1.0


class SuspectChecks:
    def __init__(self, ctl: Controller):
        self.ctl = ctl
        # Workers being checked -> failed probes so far.
        self.checking: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def report(self, deployment: str, worker_id: str) -> None:
        """A request on this worker got no answer within the request timeout (any task)."""

        async def begin() -> None:
            found = self._find(deployment, worker_id)
            if found is None or worker_id in self.checking:
                return
            dep, w = found
            self.checking[worker_id] = 0
            self.ctl.event(
                dep,
                "worker",
                "suspect",
                f"{w.id}: a request got no answer in time; checking its health",
            )
            self._probe(dep, w, 0.0)

        self.ctl.post(begin)

    def _find(self, deployment: str, worker_id: str) -> tuple[Deployment, Worker] | None:
        dep = self.ctl.deployments.get(deployment)
        w = dep.workers.get(worker_id) if dep is not None else None
        if dep is None or w is None or w.state is not WorkerState.HEALTHY or w.handle is None:
            return None
        return dep, w

    def _probe(self, dep: Deployment, w: Worker, delay_s: float) -> None:
        handle = w.handle
        assert handle is not None

        async def probe() -> None:
            if delay_s:
                await asyncio.sleep(delay_s)
            result = await self.ctl.runtime.probe(handle)
            self.ctl.post(lambda: self._judged(dep.name, w.id, result))

        task = asyncio.create_task(probe(), name=f"probe-suspect-{w.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _judged(self, deployment: str, worker_id: str, result: ProbeResult) -> None:
        failed = self.checking.get(worker_id)
        found = self._find(deployment, worker_id)
        if failed is None or found is None:
            self.checking.pop(worker_id, None)  # stopped or replaced meanwhile
            return
        dep, w = found
        verdict = judge_suspect(result, failed, PROBES_TO_FAIL)
        if verdict is SuspectVerdict.PROBE_AGAIN:
            self.checking[worker_id] = failed + 1
            self._probe(dep, w, PROBE_INTERVAL_S)
            return
        del self.checking[worker_id]
        if verdict is SuspectVerdict.RECOVERED:
            self.ctl.event(dep, "worker", "healthy", f"{w.id}: answers its health check; kept")
        elif verdict is SuspectVerdict.UNRESPONSIVE:
            reason = (
                f"unresponsive: a request timed out and {PROBES_TO_FAIL} health probes in a "
                "row got no answer"
            )
            self.ctl.workers.stop(dep, w, WorkerState.FAILED, reason)
            await self.ctl.workers.count_failure(dep, w, None, self.ctl.clock())
            self.ctl.wake()
        # ENDED: the controller's poll sees the exit and fails the worker as usual.
