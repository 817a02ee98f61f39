"""A runtime that starts nothing: workers exist only as handles in memory.

For tests and benchmarks of the control plane (thousands of workers on one laptop): it
implements the runtime protocol without processes, ports or files. Probes say ready as
soon as `ready_after_s` has passed since start (at once by default). `crash()` makes a
worker exit with a code, as a dying process would.

Handles carry pids above the kernel's largest possible pid, so no signal sent by mistake
(by another runtime reading the same store) can reach a real process.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence

from torpor.runtime.base import LaunchSpec, ProbeResult, WorkerHandle, WorkerRecord, file_logs

# Linux's pid_max is at most 2**22; every fake pid is above it.
FAKE_PID_BASE = 2**22 + 1


class FakeRuntime:
    assigns_devices = False

    def __init__(
        self,
        host: str = "127.0.0.1",
        ready_after_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._host = host
        self._ready_after_s = ready_after_s
        self._clock = clock
        self._started: dict[str, float] = {}
        self._exit: dict[str, int] = {}
        self._next = 0
        # Counters for tests and benchmarks.
        self.starts = 0
        self.stops = 0
        self.probes = 0

    @property
    def live(self) -> int:
        """Workers started and not yet stopped or crashed."""
        return sum(1 for w in self._started if w not in self._exit)

    async def start(self, launch: LaunchSpec) -> WorkerHandle:
        self._next += 1
        self.starts += 1
        self._started[launch.worker_id] = self._clock()
        self._exit.pop(launch.worker_id, None)
        return WorkerHandle(
            worker_id=launch.worker_id,
            pid=FAKE_PID_BASE + self._next,
            host=self._host,
            port=launch.fixed_port or 10_000 + self._next % 50_000,
            log_path=launch.log_path,
            health_path=launch.health_path,
            create_time=time.time(),
        )

    async def stop(self, handle: WorkerHandle, grace_s: float) -> int | None:
        if handle.worker_id not in self._started:
            return None
        self.stops += 1
        code = self._exit.setdefault(handle.worker_id, 0)
        del self._started[handle.worker_id]
        return code

    def poll(self, handle: WorkerHandle) -> int | None:
        if handle.worker_id not in self._started:
            return -1
        return self._exit.get(handle.worker_id)

    async def probe(self, handle: WorkerHandle) -> ProbeResult:
        self.probes += 1
        code = self.poll(handle)
        if code is not None:
            return ProbeResult(exit_code=code, ready=False)
        started = self._started[handle.worker_id]
        return ProbeResult(exit_code=None, ready=self._clock() - started >= self._ready_after_s)

    def logs(self, handle: WorkerHandle, tail: int, follow: bool) -> AsyncIterator[str]:
        return file_logs(handle.log_path, tail, follow)

    async def orphans(self, records: Sequence[WorkerRecord]) -> list[WorkerHandle]:
        return []

    async def adopt(self, handle: WorkerHandle) -> bool:
        return False

    def crash(self, worker_id: str, code: int = 1) -> None:
        """Make a started worker exit with `code`, as if its process died."""
        if worker_id in self._started:
            self._exit[worker_id] = code
