"""The runtime protocol: where workers run, backend-neutral.

A runtime starts a worker from a `LaunchSpec` and returns a `WorkerHandle`: the worker's
URL (any host), its node, and, once it has ended, its exit information. The controller
never assumes a worker is a local child process: it probes, polls, stops, reads logs and
finds the workers of an earlier run through this protocol only. `local` (child processes
on this host), `ray` (actors on the nodes of a Ray cluster) and `fake` (nothing at all)
implement it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torpor.logs import follow_file, tail_lines


@dataclass(frozen=True)
class Resources:
    """What one worker needs from the machine it lands on."""

    gpus: int = 0
    # Accelerator kind of the `gpus` devices (`nvidia.com/gpu`, `furiosa.ai/rngd`).
    accelerator: str = "nvidia.com/gpu"
    # A device model the worker must get (`H100`, `A100-80GB`); None takes any.
    gpu_type: str | None = None
    # CPUs reserved for the worker (the engine process, its tokenizer, its HTTP server).
    cpus: float = 1.0


# In argv and env values: the model's path on the node, once fetched there (`NodeModel`).
MODEL_ON_NODE = "{model}"
# In argv and env values: the interpreter of the worker's image on its node (`NodeImage`).
PYTHON_ON_NODE = "{python}"
# A node's own cache directory (worker logs, models fetched for that node), as the node's
# environment sets it; torpor's TORPOR_NODE_CACHE is the default.
NODE_CACHE_ENV = "TORPOR_NODE_CACHE"


def node_cache_root(default: str) -> Path:
    """On a node: its cache directory (its own TORPOR_NODE_CACHE wins over torpor's)."""
    return Path(os.environ.get(NODE_CACHE_ENV) or default)


@dataclass(frozen=True)
class NodeModel:
    """A model each node fetches for its own workers (a cluster without shared storage):
    the runtime runs `fetch(*args, node_cache_default)` on the node the worker lands on,
    before the engine starts, and puts the path it returns (`{"path": ..., "downloaded":
    bool, ...}`) in place of `MODEL_ON_NODE`. The caller passes the function in, so a
    runtime needs no model store."""

    fetch: Callable[..., dict[str, Any]]
    args: tuple[Any, ...]


@dataclass(frozen=True)
class NodeImage:
    """A function image each node builds once for its own workers (a cluster): the runtime
    calls `recipe()` on torpor's host (off the loop: it reads the image's definition and
    local files), then runs `build(*recipe(), node_cache_default)` on the node the worker
    lands on, before the engine starts, and puts the interpreter it returns (`{"python":
    ..., "built": bool, "seconds": float}`) in place of `PYTHON_ON_NODE`. A node that has
    the image builds nothing. The caller passes both in, so a runtime needs no builder."""

    id: str
    recipe: Callable[[], tuple[Any, ...]]
    build: Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one worker. `{port}` and `{host}` in argv and env values
    are replaced by the address the runtime picks."""

    worker_id: str
    deployment: str
    argv: tuple[str, ...]
    env: dict[str, str]
    health_path: str
    # Where torpor keeps the worker's log (on torpor's host, whatever node runs it).
    log_path: Path
    cwd: Path
    # A server that cannot be told its port listens on this one.
    fixed_port: int | None = None
    # Accelerator devices for this worker, already expressed as env by the GPU pool (local
    # runtime); empty where the runtime assigns devices itself (ray).
    device_env: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    # The deployment's spec version, recorded with the worker (adoption checks it).
    spec_version: int = 0
    # Set when the model is fetched on the worker's node (runtimes that place workers).
    model: NodeModel | None = None
    # Set when the worker's function image is built on its node (runtimes that place
    # workers).
    image: NodeImage | None = None


@dataclass
class WorkerHandle:
    """A started worker. `host`/`port` may be learned after start (a placed actor reports
    them); the URL is valid once a probe said ready."""

    worker_id: str
    host: str
    port: int
    log_path: Path
    health_path: str
    pid: int | None = None
    # Process start time as the OS reports it, so a reused pid is never mistaken for ours.
    create_time: float = 0.0
    # Where it runs: "local" or a cluster node id.
    node: str = "local"
    # Exit information once it has ended: code (None when unknown) and why.
    exit_code: int | None = None
    exit_reason: str | None = None
    # Device ids the worker was given on its node (by the local pool or by the cluster).
    gpu_ids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class ProbeResult:
    exit_code: int | None
    ready: bool
    # Why the worker is not ready or has ended ("waiting for cluster resources (...)",
    # "node lost"), when the runtime knows.
    reason: str | None = None
    # Not yet placed: waiting for capacity (no start timeout runs meanwhile).
    pending: bool = False
    ended: bool = False

    @property
    def exited(self) -> bool:
        return self.exit_code is not None or self.ended


@dataclass(frozen=True)
class WorkerRecord:
    """A worker as the store remembers it from an earlier run."""

    worker_id: str
    deployment: str
    spec_version: int
    pid: int | None
    create_time: float | None
    port: int | None
    log_path: Path
    health_path: str = "/health"


class Runtime(Protocol):
    # True when the runtime places devices itself (a cluster); False when torpor's local GPU
    # pool assigns them and passes them in `LaunchSpec.device_env`.
    assigns_devices: bool

    async def start(self, launch: LaunchSpec) -> WorkerHandle:
        """Start the worker; returns at once even when it waits for capacity."""
        ...

    async def stop(self, handle: WorkerHandle, grace_s: float) -> int | None: ...

    def poll(self, handle: WorkerHandle) -> int | None:
        """Exit code when the worker has ended (and fills the handle's exit information),
        else None. Cheap; no I/O."""
        ...

    async def probe(self, handle: WorkerHandle) -> ProbeResult: ...

    def logs(self, handle: WorkerHandle, tail: int, follow: bool) -> AsyncIterator[str]:
        """The last `tail` lines of the worker's log, then (follow) new lines as they come."""
        ...

    async def orphans(self, records: Sequence[WorkerRecord]) -> list[WorkerHandle]:
        """Workers of an earlier run of torpor that still run (from the store's records and,
        where the backend can list them, by name)."""
        ...

    async def adopt(self, handle: WorkerHandle) -> bool:
        """Take over a worker of an earlier run; False when this runtime cannot (the caller
        then stops it)."""
        ...


async def file_logs(path: Path, tail: int, follow: bool) -> AsyncIterator[str]:
    """A log kept in a file on torpor's host, read off the event loop."""
    for line in await asyncio.to_thread(tail_lines, path, tail):
        yield line + "\n"
    if follow:
        async for line in follow_file(path):
            yield line
