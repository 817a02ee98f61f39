"""The Ray actor that is one torpor worker: it runs the engine process on its node.

The actor asks Ray for the worker's resources (GPUs, CPUs, an accelerator type); Ray
places it on a node that has them and sets `CUDA_VISIBLE_DEVICES` to the GPU ids it
assigned. The actor starts the engine on that node's address and a free port, with those
devices, and reports where it listens: torpor's gateway talks HTTP to the engine directly;
no request goes through Ray. Logs stay in a file on the node and are read back in chunks.

Imported on the node by Ray (torpor must be installed there, as it is in the cluster
image), never needed on torpor's host without Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from typing import Any

import psutil

from torpor.runtime.base import node_cache_root
from torpor.runtime.workerenv import worker_env

# The most log bytes one read returns (the reader asks again for the rest).
LOG_CHUNK = 256 * 1024


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the engine before exec: the kernel kills it when the actor's process dies."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _fill(value: str, values: dict[str, str]) -> str:
    for placeholder, filled in values.items():
        value = value.replace(placeholder, filled)
    return value


class WorkerActor:
    """One worker: an async Ray actor owning one engine process."""

    def __init__(self, worker_id: str, node_cache: str):
        """`node_cache`: torpor's TORPOR_NODE_CACHE; the node's own setting wins."""
        self.worker_id = worker_id
        self.log_path = node_cache_root(node_cache) / "logs" / f"{worker_id}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.spawned = asyncio.Event()
        self.where: dict[str, Any] = {}

    async def node(self) -> str:
        """The id of the node Ray placed this worker on."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    async def start(
        self,
        argv: list[str],
        env: dict[str, str],
        fixed_port: int | None,
        cwd: str | None,
    ) -> dict[str, Any]:
        import ray

        if self.proc is not None:
            return await self.info()
        ctx = ray.get_runtime_context()
        node_id = ctx.get_node_id()
        # The address the cluster knows this node by (what `--node-ip-address` set).
        nodes = await asyncio.to_thread(ray.nodes)
        known = [n["NodeManagerAddress"] for n in nodes if n.get("NodeID") == node_id]
        host = str(known[0] if known else ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
        port = fixed_port or _free_port(host)
        gpu_ids = [str(i) for i in ctx.get_accelerator_ids().get("GPU", [])]
        values = {"{port}": str(port), "{host}": host}
        devices = {"CUDA_VISIBLE_DEVICES": ",".join(gpu_ids)}
        built = worker_env(
            os.environ, {k: _fill(v, values) for k, v in env.items()}, devices, self.worker_id
        )
        cmd = [_fill(a, values) for a in argv]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        usable = bool(cwd) and await asyncio.to_thread(os.path.isdir, cwd or "")
        workdir = cwd if usable and cwd else str(self.log_path.parent)
        with self.log_path.open("ab") as logf:
            logf.write(f"torpor: starting worker on {host}: {' '.join(cmd)}\n".encode())
            logf.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                env=built.env,
                cwd=workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.spawned.set()
        try:
            create_time = psutil.Process(self.proc.pid).create_time()
        except psutil.Error:
            create_time = time.time()
        self.where = {
            "worker_id": self.worker_id,
            "node": node_id,
            "host": host,
            "port": port,
            "pid": self.proc.pid,
            "create_time": create_time,
            "gpu_ids": [int(i) for i in gpu_ids if i.isdigit()],
        }
        return await self.info()

    async def info(self) -> dict[str, Any]:
        code = self.proc.returncode if self.proc is not None else None
        return {**self.where, "exit_code": code, "started": self.proc is not None}

    async def wait_exit(self) -> int:
        """Returns when the engine has exited, with its code."""
        await self.spawned.wait()
        assert self.proc is not None
        return await self.proc.wait()

    async def read_log(self, offset: int) -> tuple[bytes, int]:
        """Log bytes from `offset` (at most LOG_CHUNK) and the offset after them."""

        def read() -> tuple[bytes, int]:
            try:
                with self.log_path.open("rb") as f:
                    f.seek(offset)
                    data = f.read(LOG_CHUNK)
            except OSError:
                return b"", offset
            return data, offset + len(data)

        return await asyncio.to_thread(read)

    async def stop(self, grace_s: float) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)
        return proc.returncode


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
