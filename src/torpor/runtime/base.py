"""The runtime protocol: start, stop, probe and find the logs of worker processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one worker. `{port}` and `{host}` in argv and env values
    are replaced by the address the runtime picks."""

    worker_id: str
    deployment: str
    argv: tuple[str, ...]
    env: dict[str, str]
    health_path: str
    log_path: Path
    cwd: Path
    # A server that cannot be told its port listens on this one.
    fixed_port: int | None = None
    # Accelerator devices for this worker, already expressed as env by the GPU pool.
    device_env: dict[str, str] = field(default_factory=dict)


@dataclass
class WorkerHandle:
    worker_id: str
    pid: int
    host: str
    port: int
    log_path: Path
    health_path: str
    # Process start time as the OS reports it, so a reused pid is never mistaken for ours.
    create_time: float

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class ProbeResult:
    exit_code: int | None
    ready: bool

    @property
    def exited(self) -> bool:
        return self.exit_code is not None


class Runtime(Protocol):
    async def start(self, launch: LaunchSpec) -> WorkerHandle: ...

    async def stop(self, handle: WorkerHandle, grace_s: float) -> int | None: ...

    def poll(self, handle: WorkerHandle) -> int | None:
        """Exit code when the process has ended, else None. Cheap; no I/O."""
        ...

    async def probe(self, handle: WorkerHandle) -> ProbeResult: ...

    async def stop_orphan(self, worker_id: str, pid: int, create_time: float) -> bool:
        """Stop a worker left by an earlier run of torpor; True when one was found."""
        ...
