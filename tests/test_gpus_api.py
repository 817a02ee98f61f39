"""GPU assignment with declared devices: disjoint devices per worker as the worker process
sees them, the inventory API, 503 and `pending` when no device is free."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import openai
import psutil
import pytest

from tests.conftest import TorporServer, fake_spec


def worker_env(srv: TorporServer, name: str) -> dict[str, str]:
    dep = srv.get(name)
    (worker,) = [w for w in dep["workers"] if w["state"] == "healthy"]
    return dict(psutil.Process(worker["pid"]).environ())


def gpus(srv: TorporServer) -> dict[str, Any]:
    with srv.api() as c:
        r = c.get("/api/gpus")
        assert r.status_code == 200, r.text
        return dict(r.json())


def test_declared_gpus_are_assigned_disjointly(server_factory: Callable[..., TorporServer]) -> None:
    srv = server_factory(env={"TORPOR_GPUS": "4xA100-80GB,1xRNGD"})
    srv.deploy(fake_spec("one", gpus=1, min_workers=1))
    srv.deploy(fake_spec("two", gpus=2, min_workers=1))
    srv.deploy(fake_spec("npu", gpus=1, accelerator="furiosa.ai/rngd", min_workers=1))
    srv.deploy(fake_spec("cpu", gpus=0, min_workers=1))
    for name in ("one", "two", "npu", "cpu"):
        srv.wait_for(name, lambda d: d["ready_workers"] == 1)

    # What the worker processes themselves see.
    one = worker_env(srv, "one")["CUDA_VISIBLE_DEVICES"].split(",")
    two = worker_env(srv, "two")["CUDA_VISIBLE_DEVICES"].split(",")
    assert len(one) == 1 and len(two) == 2
    assert not set(one) & set(two) and set(one) | set(two) <= {"0", "1", "2", "3"}
    assert worker_env(srv, "npu")["FURIOSA_DEVICES"] == "0"
    assert "FURIOSA_DEVICES" not in worker_env(srv, "one")
    assert worker_env(srv, "cpu").get("CUDA_VISIBLE_DEVICES") in (None, "")

    inventory = gpus(srv)
    assert inventory["total"] == 5 and inventory["free"] == 1
    nvidia = [d for d in inventory["data"] if d["kind"] == "nvidia.com/gpu"]
    assert {d["type"] for d in nvidia} == {"A100-80GB"}
    assert {d["memory_mb"] for d in nvidia} == {81920}
    held = {str(d["index"]): d["deployment"] for d in nvidia if d["worker"]}
    assert held == {one[0]: "one", two[0]: "two", two[1]: "two"}
    cli = subprocess.run(
        [sys.executable, "-m", "torpor", "gpus", "--url", srv.url, "--api-key", srv.admin_key],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert "A100-80GB" in cli.stdout and "80 GiB" in cli.stdout and "furiosa.ai/rngd" in cli.stdout
    assert "NODE" in cli.stdout and "local" in cli.stdout
    (node,) = inventory["nodes"]
    assert node["node"] == "local" and len(node["gpus"]) == 5
    assert {g["deployment"] for g in node["gpus"] if g["worker"]} == {"one", "two", "npu"}
    view_ids = {w["id"] for w in srv.get("two")["workers"]}
    assert {d["worker"] for d in nvidia if d["deployment"] == "two"} <= view_ids

    # Full: a cold start that needs 2 devices gets 503, a warm floor shows `pending`.
    srv.deploy(fake_spec("three", gpus=2))
    srv.wait_for("three", lambda d: d["state"] == "running")
    with pytest.raises(openai.InternalServerError) as full:
        srv.openai().chat.completions.create(
            model="three", messages=[{"role": "user", "content": "hi"}]
        )
    assert full.value.status_code == 503
    assert "No GPUs available for scale-up, please retry" in str(full.value)
    srv.deploy(fake_spec("four", gpus=2, min_workers=1))
    four = srv.wait_for("four", lambda d: d["status"] == "pending")
    assert four["reason"] == "No GPUs available for scale-up"

    # Devices come back when a worker goes: the pending deployment gets them.
    with srv.api() as c:
        assert c.delete("/api/deployments/two").status_code == 200
    srv.wait_for("four", lambda d: d["status"] == "ready")
    assert sorted(worker_env(srv, "four")["CUDA_VISIBLE_DEVICES"].split(",")) == sorted(two)
