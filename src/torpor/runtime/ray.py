"""Ray runtime: each worker is one Ray actor placed on a node of a Ray cluster.

- The actor (`ray_actor.WorkerActor`) is named `torpor-<instance>-<worker id>` in the
  `torpor` namespace and detached: it outlives a torpor that dies, and the next torpor
  finds it by name and adopts it when it still serves (`orphans`, `adopt`).
- Resources: `num_gpus` = the spec's `gpus`, one CPU, `accelerator_type` for `gpu_type`
  (Ray's `accelerator_type:<T>` node resource), a custom resource named after any other
  accelerator kind. Several GPUs come from one STRICT_PACK placement group bundle (one
  node). Ray restarts nothing (`max_restarts=0`): torpor's controller decides.
- A worker Ray cannot place yet is `pending` with the resources it waits for; a Ray
  cluster with an autoscaler adds a node for that demand by itself.
- A list of acceptable GPU types (`gpu_type: "H100,A100"`): Ray places on one
  `accelerator_type`, so the actor asks for the first listed type that an alive node of
  the cluster has (with enough GPUs), else the first listed (`pick_gpu_type`).
- A function image is built on the worker's node once (`NodeImage`), as a model is
  fetched there (`NodeModel`): a Ray task pinned to the node, into its cache.
- The engine listens on its node's address; the gateway talks to it over HTTP directly.
  Its log is read back from the actor into torpor's log file for the worker.
- A worker whose actor dies is ended with "node lost" when its node is gone.

Every Ray call that may block runs in a thread; object refs are awaited as futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from torpor.errors import ModelFetchFailed, RayUnavailable
from torpor.gpus import NVIDIA
from torpor.runtime.base import (
    MODEL_ON_NODE,
    PYTHON_ON_NODE,
    LaunchSpec,
    NodeImage,
    NodeModel,
    ProbeResult,
    Resources,
    WorkerHandle,
    WorkerRecord,
    file_logs,
)

log = logging.getLogger(__name__)

NAMESPACE = "torpor"
# A start Ray has not placed after this long is reported as waiting for resources.
PENDING_AFTER_S = 1.0
LOG_POLL_S = 0.5
# How long an unreachable actor's node may take to be declared dead (Ray's health checks).
NODE_LOSS_WAIT_S = 5.0


@dataclass
class _Actor:
    """What the runtime knows of one worker's actor."""

    actor: Any
    name: str
    created: float
    handle: WorkerHandle
    started: asyncio.Future[Any] | None = None
    pg: Any = None
    request: dict[str, float] = field(default_factory=dict)
    placed: bool = False
    log_offset: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # What the worker's node does before the engine starts ("fetching the model on node
    # X"), while it does.
    fetching: str | None = None


def _ray() -> Any:
    import ray

    return ray


class RayRuntime:
    assigns_devices = True

    def __init__(
        self,
        http: Callable[[], aiohttp.ClientSession],
        address: str,
        instance: str,
        node_dir: Path,
        log_dir: Path,
        probe_timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`node_dir`: where actors keep logs on their node. `log_dir`: torpor's copies
        (for workers found by name that the store does not know)."""
        self._http = http
        self._address = address
        self._instance = instance
        self._node_dir = node_dir
        self._log_dir = log_dir
        self._probe_timeout = aiohttp.ClientTimeout(total=probe_timeout_s)
        self._clock = clock
        self._actors: dict[str, _Actor] = {}

    # -- connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Join the cluster as a driver; RayUnavailable when it cannot be reached."""
        await asyncio.to_thread(connect, self._address)

    async def close(self) -> None:
        for a in self._actors.values():
            for t in a.tasks:
                t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(_ray().shutdown)

    def actor_name(self, worker_id: str) -> str:
        return f"torpor-{self._instance}-{worker_id}"

    # -- start --------------------------------------------------------------------------

    async def start(self, launch: LaunchSpec) -> WorkerHandle:
        handle = WorkerHandle(
            worker_id=launch.worker_id,
            host="",
            port=0,
            log_path=launch.log_path,
            health_path=launch.health_path,
            node="",
        )
        entry = await asyncio.to_thread(self._create, launch, handle)
        entry.started = asyncio.ensure_future(self._begin(entry, launch))
        self._actors[launch.worker_id] = entry
        return handle

    async def _begin(self, entry: _Actor, launch: LaunchSpec) -> Any:
        """Once placed: the model into the node's cache (when fetched per node), then the
        engine. Returns where the engine listens."""
        argv, env = list(launch.argv), dict(launch.env)
        node = ""
        if launch.model is not None or launch.image is not None:
            node = str(await asyncio.wrap_future(entry.actor.node.remote().future()))
        if launch.image is not None:
            entry.fetching = f"building image {launch.image.id} on node {node}"
            got = await self._build_on(node, launch.image)
            entry.fetching = None
            python = str(got["python"])
            argv = [a.replace(PYTHON_ON_NODE, python) for a in argv]
            env = {k: v.replace(PYTHON_ON_NODE, python) for k, v in env.items()}
            if got["built"]:
                line = f"image {got['id']} built in {got['seconds']:.1f}s: {python}"
            else:
                line = f"image {got['id']} already on this node: {python}"
            await asyncio.to_thread(_note, launch.log_path, f"torpor: node {node}: {line}\n")
        if launch.model is not None:
            entry.fetching = f"fetching the model on node {node}"
            got = await self._fetch_on(node, launch.model)
            entry.fetching = None
            path = str(got["path"])
            argv = [a.replace(MODEL_ON_NODE, path) for a in argv]
            env = {k: v.replace(MODEL_ON_NODE, path) for k, v in env.items()}
            if got["downloaded"]:
                line = f"fetched {got['source']} ({got['size_bytes']} bytes) into {path}"
            else:
                line = f"model already on this node: {path}"
            await asyncio.to_thread(_note, launch.log_path, f"torpor: node {node}: {line}\n")
        return await asyncio.wrap_future(
            entry.actor.start.remote(argv, env, launch.fixed_port, str(launch.cwd)).future()
        )

    async def _fetch_on(self, node: str, model: NodeModel) -> dict[str, Any]:
        """A Ray task pinned to `node` puts the model into that node's cache (once: a later
        worker there finds it)."""
        try:
            return await self._on_node(node, model.fetch, model.args)
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc
            raise ModelFetchFailed(f"model fetch on node {node} failed: {cause}") from exc

    async def _build_on(self, node: str, image: NodeImage) -> dict[str, Any]:
        """A Ray task pinned to `node` builds the function image into that node's cache
        (once: a later worker there finds it)."""
        try:
            args = await asyncio.to_thread(image.recipe)
            return await self._on_node(node, image.build, args)
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc
            raise ModelFetchFailed(
                f"image {image.id} build on node {node} failed: {cause}"
            ) from exc

    async def _on_node(
        self, node: str, fn: Callable[..., dict[str, Any]], args: Sequence[Any]
    ) -> dict[str, Any]:
        """`fn(*args, node cache default)` in a Ray task pinned to `node`. It reserves no
        CPU: workers may hold all of the node's."""
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(fn).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            num_cpus=0,
            max_retries=0,
        )
        ref = task.remote(*args, str(self._node_dir))
        got: dict[str, Any] = await asyncio.wrap_future(ref.future())
        return got

    def _create(self, launch: LaunchSpec, handle: WorkerHandle) -> _Actor:
        ray = _ray()
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from torpor.runtime.ray_actor import WorkerActor

        res = launch.resources
        kind = None
        if res.gpu_type:
            nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
            kind = pick_gpu_type(res.gpu_type.split(","), nodes, res.gpus, res.accelerator)
        request = ray_request(res, kind)
        name = self.actor_name(launch.worker_id)
        opts: dict[str, Any] = {
            "name": name,
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "max_restarts": 0,
            "max_task_retries": 0,
            "num_cpus": res.cpus,
            "num_gpus": res.gpus if res.accelerator == NVIDIA else 0,
            "max_concurrency": 16,
        }
        if kind:
            opts["accelerator_type"] = kind
        if res.accelerator != NVIDIA and res.gpus:
            opts["resources"] = {res.accelerator: res.gpus}
        pg = None
        if res.gpus > 1:
            # Tensor parallel on one node: one bundle holding every device, strictly packed.
            pg = placement_group(
                [request], strategy="STRICT_PACK", name=f"{name}-pg", lifetime="detached"
            )
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
            )
        actor = (
            ray.remote(WorkerActor).options(**opts).remote(launch.worker_id, str(self._node_dir))
        )
        return _Actor(actor, name, self._clock(), handle, pg=pg, request=request)

    # -- observe ------------------------------------------------------------------------

    def poll(self, handle: WorkerHandle) -> int | None:
        if handle.worker_id not in self._actors:
            if handle.exit_code is None:
                handle.exit_code, handle.exit_reason = -1, handle.exit_reason or "actor gone"
            return handle.exit_code
        return handle.exit_code if handle.exit_reason is not None else None

    async def probe(self, handle: WorkerHandle) -> ProbeResult:
        entry = self._actors.get(handle.worker_id)
        if entry is None or handle.exit_reason is not None:
            return ProbeResult(handle.exit_code, False, handle.exit_reason, ended=True)
        if not entry.placed:
            started = entry.started
            if started is None or not started.done():
                if entry.fetching:
                    return ProbeResult(None, False, entry.fetching)
                if self._clock() - entry.created >= PENDING_AFTER_S:
                    return ProbeResult(None, False, waiting_reason(entry.request), pending=True)
                return ProbeResult(None, False)
            try:
                info = started.result()
            except ModelFetchFailed as exc:
                await self._ended(entry, -1, str(exc))
                return ProbeResult(-1, False, handle.exit_reason, ended=True)
            except Exception as exc:
                await self._ended(entry, -1, await self._why_dead(handle, exc))
                return ProbeResult(-1, False, handle.exit_reason, ended=True)
            self._placed(entry, info)
        try:
            async with self._http().get(
                handle.url + handle.health_path, timeout=self._probe_timeout
            ) as resp:
                await resp.read()
                return ProbeResult(None, resp.status == 200)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return ProbeResult(None, False)

    def _placed(self, entry: _Actor, info: dict[str, Any]) -> None:
        h = entry.handle
        h.host, h.port, h.node = str(info["host"]), int(info["port"]), str(info["node"])
        h.pid, h.create_time = info.get("pid"), float(info.get("create_time") or 0.0)
        h.gpu_ids = [int(i) for i in info.get("gpu_ids", [])]
        entry.placed = True
        entry.tasks.append(asyncio.create_task(self._watch(entry)))
        entry.tasks.append(asyncio.create_task(self._pump_logs(entry)))

    async def _watch(self, entry: _Actor) -> None:
        """Ends the handle when the engine exits or the actor dies (its node lost)."""
        h = entry.handle
        try:
            code = await asyncio.wrap_future(entry.actor.wait_exit.remote().future())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._ended(entry, -1, await self._why_dead(h, exc))
            return
        await self._ended(entry, int(code), f"exited with code {code}")

    async def _ended(self, entry: _Actor, code: int, reason: str) -> None:
        h = entry.handle
        if h.exit_reason is None:
            h.exit_code, h.exit_reason = code, reason

    async def _why_dead(self, handle: WorkerHandle, exc: BaseException) -> str:
        """ "node lost" when the worker's node is (or within NODE_LOSS_WAIT_S turns) dead in
        the cluster's view; an unreachable actor is usually the first sign of it."""
        deadline = self._clock() + NODE_LOSS_WAIT_S
        while handle.node:
            if not await asyncio.to_thread(_node_alive, handle.node):
                return "node lost"
            if self._clock() >= deadline:
                break
            await asyncio.sleep(0.25)
        return f"worker actor died: {type(exc).__name__}"

    async def _pump_logs(self, entry: _Actor) -> None:
        """Copies the engine's log from its node into torpor's log file for the worker."""
        with contextlib.suppress(OSError):
            await asyncio.to_thread(entry.handle.log_path.parent.mkdir, parents=True, exist_ok=True)
        while True:
            try:
                more = await self._copy_log(entry)
            except asyncio.CancelledError:
                raise
            except Exception:
                return  # the actor is gone
            if not more:
                await asyncio.sleep(LOG_POLL_S)

    async def _copy_log(self, entry: _Actor) -> bool:
        ref = entry.actor.read_log.remote(entry.log_offset)
        data, offset = await asyncio.wrap_future(ref.future())
        if data:
            await asyncio.to_thread(_append, entry.handle.log_path, data)
        entry.log_offset = offset
        return bool(data)

    def logs(self, handle: WorkerHandle, tail: int, follow: bool) -> AsyncIterator[str]:
        return file_logs(handle.log_path, tail, follow)

    # -- stop ---------------------------------------------------------------------------

    async def stop(self, handle: WorkerHandle, grace_s: float) -> int | None:
        entry = self._actors.pop(handle.worker_id, None)
        if entry is None:
            return None
        for t in entry.tasks:
            t.cancel()
        if entry.started is not None:
            entry.started.cancel()
        code: int | None = None
        if entry.placed and handle.exit_reason is None:
            with contextlib.suppress(Exception):
                ref = entry.actor.stop.remote(grace_s)
                code = await asyncio.wait_for(asyncio.wrap_future(ref.future()), grace_s + 5)
            with contextlib.suppress(Exception):  # the last lines of its log
                while await asyncio.wait_for(self._copy_log(entry), 5):
                    pass
        await asyncio.to_thread(_kill, entry)
        if handle.exit_reason is None:
            handle.exit_code, handle.exit_reason = code, "stopped"
        return code

    # -- an earlier run -----------------------------------------------------------------

    async def orphans(self, records: Sequence[WorkerRecord]) -> list[WorkerHandle]:
        """The actors of this torpor instance (by name) that an earlier run left."""
        prefix = f"torpor-{self._instance}-"
        known = {r.worker_id: r for r in records}
        names = await asyncio.to_thread(_named_actors, prefix)
        found = []
        for name in names:
            worker_id = name[len(prefix) :]
            record = known.get(worker_id)
            log_path = record.log_path if record else self._log_dir / f"{worker_id}.log"
            handle = WorkerHandle(
                worker_id=worker_id,
                host="",
                port=0,
                log_path=log_path,
                health_path=record.health_path if record else "/health",
                node="",
            )
            try:
                actor = await asyncio.to_thread(_ray().get_actor, name, NAMESPACE)
            except Exception:
                continue
            entry = _Actor(actor, name, self._clock(), handle)
            entry.pg = await asyncio.to_thread(_placement_group_of, f"{name}-pg")
            self._actors[worker_id] = entry
            try:
                info = await asyncio.wait_for(asyncio.wrap_future(actor.info.remote().future()), 10)
            except Exception:
                info = None
            if info and info.get("started"):
                h = handle
                h.host, h.port, h.node = str(info["host"]), int(info["port"]), str(info["node"])
                h.pid = info.get("pid")
                h.gpu_ids = [int(i) for i in info.get("gpu_ids", [])]
            found.append(handle)
        return found

    async def adopt(self, handle: WorkerHandle) -> bool:
        entry = self._actors.get(handle.worker_id)
        if entry is None or not handle.port:
            return False
        try:
            async with self._http().get(
                handle.url + handle.health_path, timeout=self._probe_timeout
            ) as resp:
                await resp.read()
                if resp.status != 200:
                    return False
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
        info = {
            "host": handle.host,
            "port": handle.port,
            "node": handle.node,
            "pid": handle.pid,
            "gpu_ids": handle.gpu_ids,
        }
        self._placed(entry, info)
        return True

    # -- inventory ----------------------------------------------------------------------

    async def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes with their devices, and which worker holds which GPU."""
        holders: dict[tuple[str, int], str] = {}
        for wid, entry in self._actors.items():
            h = entry.handle
            for gpu in h.gpu_ids:
                holders[(h.node, gpu)] = wid
        raw = await asyncio.to_thread(_ray().nodes)
        out = []
        for n in raw:
            res = n.get("Resources", {})
            kinds = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
            count = int(res.get("GPU", 0))
            node_id = n.get("NodeID", "")
            out.append(
                {
                    "node": node_id,
                    "address": n.get("NodeManagerAddress"),
                    "alive": bool(n.get("Alive")),
                    "type": kinds[0] if kinds else None,
                    "gpus": [
                        {"index": i, "worker": holders.get((node_id, i))} for i in range(count)
                    ],
                }
            )
        return out


def connect(address: str) -> None:
    """Join the Ray cluster at `address` as a driver (once per process); RayUnavailable
    when Ray is not installed or the cluster cannot be reached."""
    try:
        ray = _ray()
    except ImportError as exc:
        raise RayUnavailable(
            "the ray runtime needs Ray: pip install -e '.[ray]' (ray[default])"
        ) from exc
    if ray.is_initialized():
        return
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and "://" not in address:
        try:  # fail fast and clearly rather than in Ray's reconnect loop
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise RayUnavailable(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc
    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc


def ray_request(res: Resources, gpu_type: str | None = None) -> dict[str, float]:
    """The resources one worker asks Ray for (one placement group bundle), of GPU type
    `gpu_type` (one of the spec's acceptable types, see `pick_gpu_type`)."""
    request: dict[str, float] = {"CPU": res.cpus}
    if res.gpus:
        key = "GPU" if res.accelerator == NVIDIA else res.accelerator
        request[key] = float(res.gpus)
    if gpu_type:
        request[f"accelerator_type:{gpu_type}"] = 0.001
    return request


def pick_gpu_type(
    acceptable: Sequence[str],
    nodes: Sequence[dict[str, float]],
    gpus: int,
    accelerator: str = NVIDIA,
) -> str:
    """The one GPU type to ask Ray for, of a list of acceptable ones (pure): Ray places an
    actor on one `accelerator_type`, so the first listed type that some node (by its total
    resources) has with at least `gpus` devices; else the first listed, which a cluster
    with an autoscaler may add. The worker then waits for that type only."""
    types = [t.strip() for t in acceptable if t.strip()]
    key = "GPU" if accelerator == NVIDIA else accelerator
    for t in types:
        if any(n.get(f"accelerator_type:{t}", 0) > 0 and n.get(key, 0) >= gpus for n in nodes):
            return t
    return types[0]


def waiting_reason(request: dict[str, float]) -> str:
    parts = ", ".join(
        f"{k}: {v:g}" if not k.startswith("accelerator_type:") else k
        for k, v in sorted(request.items())
    )
    return f"waiting for cluster resources ({parts})"


def _node_alive(node_id: str) -> bool:
    try:
        return any(n.get("NodeID") == node_id and n.get("Alive") for n in _ray().nodes())
    except Exception:
        return True


def _named_actors(prefix: str) -> list[str]:
    listed = _ray().util.list_named_actors(all_namespaces=True)
    return sorted(
        a["name"]
        for a in listed
        if a.get("namespace") == NAMESPACE and str(a.get("name", "")).startswith(prefix)
    )


def _placement_group_of(name: str) -> Any:
    from ray.util import get_placement_group

    try:
        return get_placement_group(name)
    except Exception:
        return None


def _kill(entry: _Actor) -> None:
    ray = _ray()
    with contextlib.suppress(Exception):
        ray.kill(entry.actor, no_restart=True)
    if entry.pg is not None:
        from ray.util.placement_group import remove_placement_group

        with contextlib.suppress(Exception):
            remove_placement_group(entry.pg)


def _note(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _append(path, line.encode())


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)
