"""Models on a Ray cluster (tests/ray_fixture.py, each GPU node with its own cache dir as
its TORPOR_NODE_CACHE) from the local Hub (tests/hub_server.py): fetched once per node that
runs a worker, never again on a node that has it; once in all with TORPOR_SHARED_STORAGE."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import TorporServer
from tests.hub_server import HubServer
from tests.ray_fixture import RayCluster
from tests.test_ray import ask, healthy, ray_env
from torpor.modelstore.placement import Placement, placement_for

WEIGHTS = os.urandom(256 * 1024)
REPOS = {"acme/tiny": {"config.json": b'{"model_type": "tiny"}', "weights.bin": WEIGHTS}}


def model_spec(name: str, hub_url: str, **fields: Any) -> dict[str, Any]:
    """The fake engine on its node's address, started (by a shell that stays its parent, so
    the worker's command line shows the path) only when the model files are at that path."""
    engine = f"{sys.executable} -m torpor.testing.fake_engine --port {{port}} --host {{host}}"
    spec: dict[str, Any] = {
        "name": name,
        "framework": "custom",
        "model": "acme/tiny",
        "env": {"HF_ENDPOINT": hub_url},
        "options": {
            "command": f'sh -c "test -s {{model}}/weights.bin && {engine}"',
            "health_path": "/health",
        },
        "idle_timeout_s": 300,
    }
    spec.update(fields)
    return spec


def model_arg(pid: int) -> str:
    """The model directory the engine's command line was given."""
    cmd = " ".join(psutil.Process(pid).cmdline())
    return cmd.split("test -s ", 1)[1].split("/weights.bin", 1)[0].strip("'")


def test_placement_follows_the_runtime_and_shared_storage(tmp_path: Path) -> None:
    assert placement_for("local", None) is Placement.HOST
    assert placement_for("local", tmp_path) is Placement.HOST
    assert placement_for("ray", None) is Placement.NODE
    assert placement_for("ray", tmp_path) is Placement.SHARED


def test_model_fetched_once_per_node_and_never_again_on_a_node_that_has_it(
    ray_cluster: RayCluster, server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    ray_cluster.ensure_gpu_nodes()
    with HubServer(REPOS) as hub:
        srv = server_factory(env=ray_env(ray_cluster, tmp_path))
        srv.deploy(model_spec("pernode", hub.url, gpus=2, min_workers=2, max_workers=2))
        dep = srv.wait_for("pernode", lambda d: len(healthy(d)) == 2, timeout=120)
        first = healthy(dep)
        assert len({w["node"] for w in first}) == 2
        # One download per node: each file fetched exactly twice.
        assert dict(hub.downloads) == {
            ("acme/tiny", "config.json"): 2,
            ("acme/tiny", "weights.bin"): 2,
        }
        caches = ray_cluster.node_caches
        held = [list(c.glob("deployments/pernode/models/*/weights.bin")) for c in caches]
        assert [len(h) for h in held] == [1, 1]
        assert all(h[0].read_bytes() == WEIGHTS for h in held)
        # Each engine boots from its own node's cache.
        dirs = {model_arg(w["pid"]) for w in first}
        assert dirs == {str(h[0].parent) for h in held}
        assert ask(srv, "pernode")
        with srv.api() as c:
            logs = c.get("/api/deployments/pernode/logs", params={"tail": 200}).text
        assert logs.count("fetched huggingface:acme/tiny") == 2

        # Scale to zero, then a request: the worker lands on a node that has the model
        # and nothing is downloaded (no request reaches the Hub at all).
        srv.patch("pernode", {"min_workers": 0, "idle_timeout_s": 1})
        srv.wait_for("pernode", lambda d: d["status"] == "scaled_to_zero", timeout=60)
        before = len(hub.requests)
        assert ask(srv, "pernode")
        (again,) = healthy(srv.get("pernode"))
        assert again["id"] not in {w["id"] for w in first}
        assert len(hub.requests) == before
        assert sum(hub.downloads.values()) == 4
        assert model_arg(again["pid"]) in dirs
        with srv.api() as c:
            logs = c.get("/api/deployments/pernode/logs", params={"tail": 200}).text
        assert "model already on this node" in logs
        with srv.api() as c:
            assert c.delete("/api/deployments/pernode").status_code == 200


def test_with_shared_storage_the_model_is_fetched_once_for_the_cluster(
    ray_cluster: RayCluster, server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    ray_cluster.ensure_gpu_nodes()
    shared = tmp_path / "shared"
    env = {**ray_env(ray_cluster, tmp_path), "TORPOR_SHARED_STORAGE": str(shared)}
    with HubServer(REPOS) as hub:
        srv = server_factory(env=env)
        srv.deploy(model_spec("shared", hub.url, gpus=2, min_workers=2, max_workers=2))
        dep = srv.wait_for("shared", lambda d: len(healthy(d)) == 2, timeout=120)
        workers = healthy(dep)
        assert len({w["node"] for w in workers}) == 2
        assert dict(hub.downloads) == {
            ("acme/tiny", "config.json"): 1,
            ("acme/tiny", "weights.bin"): 1,
        }
        model_dir = Path(dep["model_path"])
        assert model_dir.is_relative_to(shared)
        assert (model_dir / "weights.bin").read_bytes() == WEIGHTS
        assert {model_arg(w["pid"]) for w in workers} == {str(model_dir)}
        assert dep["download"]["done"] and dep["download"]["bytes_done"] == sum(
            len(b) for b in REPOS["acme/tiny"].values()
        )
        assert not any(list(c.glob("deployments/shared/*")) for c in ray_cluster.node_caches)
        assert ask(srv, "shared")
        with srv.api() as c:
            assert c.delete("/api/deployments/shared").status_code == 200
