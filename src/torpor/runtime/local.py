"""Local runtime: each worker is a child process on a free loopback port.

A worker gets an allowlisted environment (see `workerenv`), never torpor's own. A worker
that runs a container (see `containers`) is also removed by its container's name when it
stops, and containers left by an earlier run of torpor are removed by label.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import aiohttp
import psutil

from torpor.gpus import NVIDIA, VISIBLE_DEVICES_ENV
from torpor.runtime.base import LaunchSpec, ProbeResult, WorkerHandle, WorkerRecord, file_logs
from torpor.runtime.containers import (
    GPU_IDS,
    INSTANCE,
    WORKER_ID,
    ContainerCli,
    container_name,
    container_runtime,
    is_container_launch,
)
from torpor.runtime.workerenv import WORKER_ID_ENV, worker_env

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it if torpor dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _substitute(value: str, values: Mapping[str, str]) -> str:
    for placeholder, filled in values.items():
        value = value.replace(placeholder, filled)
    return value


class LocalRuntime:
    # Devices come from torpor's GPU pool (`LaunchSpec.device_env`).
    assigns_devices = False

    def __init__(
        self,
        http: Callable[[], aiohttp.ClientSession],
        host: str = "127.0.0.1",
        probe_timeout_s: float = 1.0,
        *,
        instance: str | None = None,
        host_env: Mapping[str, str] | None = None,
    ):
        """`instance` labels this torpor's containers (`containers.instance_id` of the
        data dir); without it, containers of an earlier run are not looked for.
        `host_env` is the environment workers' allowlisted variables come from."""
        self._http = http
        self._host = host
        self._probe_timeout = aiohttp.ClientTimeout(total=probe_timeout_s)
        self._instance = instance
        self._host_env = os.environ if host_env is None else host_env
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        # Container workers: worker id -> the command line that removes its container.
        self._containers: dict[str, ContainerCli] = {}
        self._sweep: asyncio.Task[set[str]] | None = None

    async def start(self, launch: LaunchSpec) -> WorkerHandle:
        port = launch.fixed_port or free_port(self._host)
        container = is_container_launch(launch.argv)
        values = {
            "{port}": str(port),
            "{host}": self._host,
            WORKER_ID: launch.worker_id,
            INSTANCE: self._instance or "",
            GPU_IDS: launch.device_env.get(VISIBLE_DEVICES_ENV[NVIDIA], ""),
        }
        argv = [_substitute(a, values) for a in launch.argv]
        built = worker_env(
            self._host_env,
            {k: _substitute(v, values) for k, v in launch.env.items()},
            launch.device_env,
            launch.worker_id,
            container_cli=container,
        )
        if container:
            self._containers[launch.worker_id] = ContainerCli(argv[0], self._host_env)
            # Containers of an earlier run go first: they may hold this worker's GPUs.
            await self._sweep_containers(argv[0])
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        with launch.log_path.open("ab") as logf:
            if built.refused:
                names = ", ".join(built.refused)
                log.warning(
                    "worker %s: env %s not passed (TORPOR_* is torpor's)", launch.worker_id, names
                )
                logf.write(
                    f"torpor: not passed to the worker (TORPOR_* is torpor's): {names}\n".encode()
                )
            logf.write(f"torpor: starting worker: {' '.join(argv)}\n".encode())
            logf.flush()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logf,
                    stderr=asyncio.subprocess.STDOUT,
                    env=built.env,
                    cwd=launch.cwd,
                    # Own process group: stop() signals the whole tree (shell wrappers too),
                    # and a Ctrl-C on torpor's terminal does not hit workers before torpor
                    # has stopped them in order.
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                logf.write(f"torpor: cannot start worker: {exc}\n".encode())
                self._containers.pop(launch.worker_id, None)
                raise
        self._procs[launch.worker_id] = proc
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = time.time()
        return WorkerHandle(
            worker_id=launch.worker_id,
            pid=proc.pid,
            host=self._host,
            port=port,
            log_path=launch.log_path,
            health_path=launch.health_path,
            create_time=create_time,
        )

    def poll(self, handle: WorkerHandle) -> int | None:
        proc = self._procs.get(handle.worker_id)
        if proc is None:
            return -1
        return proc.returncode

    async def probe(self, handle: WorkerHandle) -> ProbeResult:
        code = self.poll(handle)
        if code is not None:
            return ProbeResult(exit_code=code, ready=False)
        try:
            async with self._http().get(
                handle.url + handle.health_path, timeout=self._probe_timeout
            ) as resp:
                await resp.read()
                return ProbeResult(exit_code=None, ready=resp.status == 200)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return ProbeResult(exit_code=None, ready=False)

    async def stop(self, handle: WorkerHandle, grace_s: float) -> int | None:
        proc = self._procs.get(handle.worker_id)
        cli = self._containers.pop(handle.worker_id, None)
        try:
            if proc is None:
                if handle.pid is not None:  # a worker of an earlier run (see orphans)
                    await self._stop_orphan_process(
                        handle.worker_id, handle.pid, handle.create_time
                    )
                return None
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), grace_s)
                except TimeoutError:
                    log.warning(
                        "worker %s ignored SIGTERM for %.1fs: killing", handle.worker_id, grace_s
                    )
                    _signal_group(proc.pid, signal.SIGKILL)
                    await proc.wait()
            # Children the engine left in its group go too.
            _signal_group(proc.pid, signal.SIGKILL)
            return proc.returncode
        finally:
            self._procs.pop(handle.worker_id, None)
            if cli is not None:
                # The container outlives its command line when that was killed: remove it.
                await cli.remove([container_name(handle.worker_id)])

    def logs(self, handle: WorkerHandle, tail: int, follow: bool) -> AsyncIterator[str]:
        return file_logs(handle.log_path, tail, follow)

    async def orphans(self, records: Sequence[WorkerRecord]) -> list[WorkerHandle]:
        """Workers of an earlier run whose process still runs (the same process: same start
        time or same worker id in its environment). Containers of an earlier run are
        removed here too."""
        found = []
        for r in records:
            if r.pid is not None and await asyncio.to_thread(
                _same_process, r.pid, r.create_time or 0.0, r.worker_id
            ):
                found.append(
                    WorkerHandle(
                        worker_id=r.worker_id,
                        host=self._host,
                        port=r.port or 0,
                        log_path=r.log_path,
                        health_path=r.health_path,
                        pid=r.pid,
                        create_time=r.create_time or 0.0,
                    )
                )
        exe = container_runtime()
        if exe is not None:
            await self._sweep_containers(exe)
        return found

    async def adopt(self, handle: WorkerHandle) -> bool:
        """Never: a local worker is a child of the torpor that started it (it dies with it);
        one that survived is stopped."""
        return False

    def _sweep_containers(self, exe: str) -> asyncio.Future[set[str]]:
        """Once per runtime: remove the containers of this instance that no worker of this
        runtime runs (left by an earlier run). Resolves to the names removed."""
        if self._sweep is None:
            self._sweep = asyncio.create_task(
                self._remove_untracked(ContainerCli(exe, self._host_env))
            )
        return self._sweep

    async def _remove_untracked(self, cli: ContainerCli) -> set[str]:
        if self._instance is None:
            return set()
        names = await cli.names(self._instance)
        if not names:
            return set()
        ours = {container_name(w) for w in self._containers}
        stale = sorted(set(names) - ours)
        if stale:
            log.warning(
                "removing %d container(s) left by an earlier run: %s", len(stale), ", ".join(stale)
            )
            await cli.remove(stale)
        return set(stale)

    async def _stop_orphan_process(self, worker_id: str, pid: int, create_time: float) -> bool:
        try:
            proc = psutil.Process(pid)
            same = abs(proc.create_time() - create_time) < 1.0
            if not same:
                same = proc.environ().get(WORKER_ID_ENV) == worker_id
        except psutil.Error:
            return False
        if not same:
            return False
        log.warning("stopping orphan worker %s (pid %d) left by an earlier run", worker_id, pid)
        _signal_group(pid, signal.SIGTERM)
        with contextlib.suppress(psutil.Error):
            try:
                await asyncio.to_thread(proc.wait, 5)
            except psutil.TimeoutExpired:
                _signal_group(pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 5)
        return True


def _same_process(pid: int, create_time: float, worker_id: str) -> bool:
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) < 1.0:
            return True
        return proc.environ().get(WORKER_ID_ENV) == worker_id
    except psutil.Error:
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
