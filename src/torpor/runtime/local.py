"""Local runtime: each worker is a child process on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

import aiohttp
import psutil

from torpor.runtime.base import LaunchSpec, ProbeResult, WorkerHandle

log = logging.getLogger(__name__)

WORKER_ID_ENV = "TORPOR_WORKER_ID"
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it if torpor dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _substitute(value: str, host: str, port: int) -> str:
    return value.replace("{port}", str(port)).replace("{host}", host)


class LocalRuntime:
    def __init__(
        self,
        http: Callable[[], aiohttp.ClientSession],
        host: str = "127.0.0.1",
        probe_timeout_s: float = 1.0,
    ):
        self._http = http
        self._host = host
        self._probe_timeout = aiohttp.ClientTimeout(total=probe_timeout_s)
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, launch: LaunchSpec) -> WorkerHandle:
        port = launch.fixed_port or free_port(self._host)
        argv = [_substitute(a, self._host, port) for a in launch.argv]
        env = dict(os.environ)
        env.update({k: _substitute(v, self._host, port) for k, v in launch.env.items()})
        env.update(launch.device_env)
        env[WORKER_ID_ENV] = launch.worker_id
        env.setdefault("PYTHONUNBUFFERED", "1")
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        with launch.log_path.open("ab") as logf:
            logf.write(f"torpor: starting worker: {' '.join(argv)}\n".encode())
            logf.flush()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logf,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    cwd=launch.cwd,
                    # Own process group: stop() signals the whole tree (shell wrappers too),
                    # and a Ctrl-C on torpor's terminal does not hit workers before torpor
                    # has stopped them in order.
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                logf.write(f"torpor: cannot start worker: {exc}\n".encode())
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
        if proc is None:
            return None
        try:
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

    async def stop_orphan(self, worker_id: str, pid: int, create_time: float) -> bool:
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


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
