"""Functions on a Ray cluster (tests/ray_fixture.py: two GPU nodes of type A100, each with
its own TORPOR_NODE_CACHE): the image is built on each node that runs a worker, once per
node, never again on a node that has it, and never on torpor's host; a list of acceptable
GPU types is placed on the one the cluster has."""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from tests.conftest import TorporServer
from tests.ray_fixture import RayCluster
from tests.test_ray import healthy, ray_env
from torpor.functions.loader import apps_in, load_module
from torpor.runtime.base import Resources
from torpor.runtime.ray import pick_gpu_type, ray_request
from torpor.sdk import Client

# The image's build command appends a line to a file in the node's own cache: one line per
# build on that node (the build runs on the node, with the node's environment).
APP_SOURCE = """
import os
import sys

import torpor

app = torpor.App("raydemo")
image = torpor.Image.python().run_commands(
    'echo build >> "$TORPOR_NODE_CACHE/image-builds.txt"'
)


@app.function(image=image, gpu=["H100:2", "A100:2"], min_workers=2, max_workers=2,
              idle_timeout_s=300)
def where(text: str) -> dict:
    return {"text": text, "python": sys.executable, "pid": os.getpid(),
            "devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
"""


def load_app(directory: Path) -> ModuleType:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "raydemo_app.py"
    path.write_text(textwrap.dedent(APP_SOURCE))
    sys.modules.pop(path.stem, None)
    return load_module(path)


def builds(cluster: RayCluster) -> list[int]:
    """How many times each GPU node built the image."""
    counts = []
    for cache in cluster.node_caches:
        marks = cache / "image-builds.txt"
        counts.append(len(marks.read_text().splitlines()) if marks.exists() else 0)
    return counts


def test_pick_gpu_type_takes_the_first_type_the_cluster_has() -> None:
    a100 = {"GPU": 2.0, "accelerator_type:A100": 2.0, "CPU": 3.0}
    l4 = {"GPU": 1.0, "accelerator_type:L4": 1.0}
    assert pick_gpu_type(["H100", "A100"], [a100], 2) == "A100"
    assert pick_gpu_type(["A100", "L4"], [l4, a100], 1) == "A100"
    # Not enough devices of the first type on any node: the next type that has them.
    assert pick_gpu_type(["L4", "A100"], [l4, a100], 2) == "A100"
    # None in the cluster: the first listed (an autoscaler may add it).
    assert pick_gpu_type(["H100", "B200"], [a100, l4], 1) == "H100"
    assert ray_request(Resources(2, gpu_type="H100,A100"), "A100") == {
        "CPU": 1.0,
        "GPU": 2.0,
        "accelerator_type:A100": 0.001,
    }


def test_function_image_built_once_per_node_on_ray_and_never_on_a_node_that_has_it(
    ray_cluster: RayCluster, server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    ray_cluster.ensure_gpu_nodes()
    before = builds(ray_cluster)
    srv = server_factory(env=ray_env(ray_cluster, tmp_path))
    module = load_app(tmp_path / "app")
    (app,) = apps_in(module)
    client = Client(srv.url, srv.admin_key)
    app.deploy(client, on_log=None)
    dep = srv.wait_for("raydemo-where", lambda d: len(healthy(d)) == 2, timeout=180)
    workers = healthy(dep)
    # Two workers of 2 GPUs each on two nodes of the second listed type (no H100 here).
    assert len({w["node"] for w in workers}) == 2
    assert dep["gpu_type"] == "H100,A100"
    # Each node built the image exactly once; torpor's host built nothing (recorded only).
    assert [b - a for a, b in zip(before, builds(ray_cluster), strict=True)] == [1, 1]
    image_id = dep["options"]["image"]
    host_image = srv.data_dir / "images" / image_id
    assert (host_image / ".torpor-image.json").is_file()
    assert not (host_image / "bin").exists()
    # The function server runs with the image's interpreter in its node's cache.
    pythons = {module.where.remote(f"x{i}")["python"] for i in range(8)}
    caches = {str(c / "images" / image_id / "bin" / "python") for c in ray_cluster.node_caches}
    assert pythons <= caches and pythons
    with srv.api() as c:
        logs = c.get("/api/deployments/raydemo-where/logs", params={"tail": 200}).text
    assert logs.count(f"image {image_id} built in") == 2

    # Scale to zero, then a call: the worker lands on a node that has the image and that
    # node builds nothing.
    srv.patch("raydemo-where", {"min_workers": 0, "idle_timeout_s": 1})
    srv.wait_for("raydemo-where", lambda d: d["status"] == "scaled_to_zero", timeout=60)
    counts = builds(ray_cluster)
    started = time.monotonic()
    assert module.where.remote("again")["text"] == "again"
    assert time.monotonic() - started < 60
    assert builds(ray_cluster) == counts
    with srv.api() as c:
        logs = c.get("/api/deployments/raydemo-where/logs", params={"tail": 400}).text
    assert f"image {image_id} already on this node" in logs
    assert app.delete(client) == ["raydemo-where"]
