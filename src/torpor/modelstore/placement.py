"""Where a deployment's model is stored when its workers may run on other machines.

- `host`: the deployment's storage directory on torpor's host (the local runtime): the
  setup pipeline fetches it once, every worker boots from it.
- `shared`: `TORPOR_SHARED_STORAGE`, a path mounted at the same place on every node (and
  on torpor's host): the setup pipeline fetches it once there, for the whole cluster.
- `node`: a cluster without shared storage: the model is fetched once per node that runs a
  worker, into that node's cache (`TORPOR_NODE_CACHE` as the node's own environment sets
  it, else torpor's setting), when the first worker lands there. A later worker on that
  node finds it and downloads nothing.

Only models that are downloaded (Hugging Face, Ollama) go to a node's cache; a bundled
model or a local path is resolved where the worker runs, as on one host.
`fetch_into_node_cache` is what runs on the node (a Ray task pinned to it).
"""

from __future__ import annotations

import asyncio
import fcntl
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torpor.modelstore.sources import SourceKind, source_for
from torpor.runtime.base import node_cache_root

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec

DOWNLOADED = frozenset({SourceKind.HUGGINGFACE, SourceKind.OLLAMA})


class Placement(StrEnum):
    HOST = "host"
    SHARED = "shared"
    NODE = "node"


def placement_for(runtime: str, shared_storage: Path | None) -> Placement:
    """Where models go for this runtime and settings (pure)."""
    if runtime == "local":
        return Placement.HOST
    return Placement.SHARED if shared_storage is not None else Placement.NODE


def fetched_per_node(placement: Placement, spec: DeploymentSpec, needs_model: bool) -> bool:
    """True when each node fetches this spec's model for its own workers."""
    if placement is not Placement.NODE:
        return False
    return source_for(spec, needs_model).kind in DOWNLOADED


def fetch_into_node_cache(
    spec_json: dict[str, Any], needs_model: bool, default_root: str
) -> dict[str, Any]:
    """On a node: make sure the deployment's model is in this node's cache; returns its path
    there, its size and whether this call downloaded it. One fetch at a time per deployment
    on a node (a file lock), so two workers landing together download it once."""
    from torpor.modelstore.store import ModelStore
    from torpor.spec import DeploymentSpec

    spec = DeploymentSpec.model_validate(spec_json)
    storage = node_cache_root(default_root) / "deployments" / spec.name
    storage.mkdir(parents=True, exist_ok=True)
    with (storage / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fetched = asyncio.run(ModelStore().fetch(spec, needs_model, storage, lambda _p: None))
    return {
        "path": str(fetched.path) if fetched.path is not None else None,
        "size_bytes": fetched.size_bytes,
        "downloaded": fetched.downloaded,
        "source": f"{fetched.source.kind.value}:{fetched.source.ref}",
    }
