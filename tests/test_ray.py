"""The ray runtime on a real multi-node Ray cluster (tests/ray_fixture.py): workers as
actors on GPU nodes, cold starts held, capacity that never comes, adoption after torpor is
SIGKILLed, a node lost under traffic, and the real llama.cpp engine through Ray."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from tests.conftest import TorporServer, fake_spec, free_port, llama_spec
from tests.ray_fixture import RAY_NODE_IP, RayCluster, kill_node_of

MESSAGES = [{"role": "user", "content": "hello"}]


def ray_spec(name: str, **fields: Any) -> dict[str, Any]:
    """The fake engine on its node's address (the URL the actor reports)."""
    return fake_spec(name, engine_args="--host {host}", **fields)


def ray_env(cluster: RayCluster, tmp_path: Path) -> dict[str, str]:
    return {
        "TORPOR_RUNTIME": "ray",
        "TORPOR_RAY_ADDRESS": cluster.address,
        "TORPOR_NODE_CACHE": str(tmp_path / "node"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "TORPOR_CREATE_DEFAULT_DEPLOYMENT": "false",
    }


def engine_env(pid: int) -> dict[str, str]:
    return dict(psutil.Process(pid).environ())


def healthy(dep: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in dep["workers"] if w["state"] == "healthy"]


def ask(srv: TorporServer, model: str) -> str:
    r = srv.openai().chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]
    return r.choices[0].message.content or ""


def test_ray_unreachable_at_start_is_a_clear_error(tmp_path: Path) -> None:
    srv = TorporServer(
        tmp_path / "data",
        {"TORPOR_RUNTIME": "ray", "TORPOR_RAY_ADDRESS": f"127.0.0.2:{free_port()}"},
    )
    srv.data_dir.mkdir(parents=True)
    out = subprocess.run(
        [sys.executable, "-m", "torpor", "serve", "--port", str(srv.port)],
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "cannot reach the Ray cluster" in out.stderr


def test_two_multi_gpu_workers_land_on_two_nodes_with_ray_assigned_devices(
    ray_cluster: RayCluster, server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    srv = server_factory(env=ray_env(ray_cluster, tmp_path))
    srv.deploy(ray_spec("tp", gpus=2, min_workers=2, max_workers=2))
    dep = srv.wait_for("tp", lambda d: len(healthy(d)) == 2, timeout=90)
    workers = healthy(dep)
    assert len({w["node"] for w in workers}) == 2
    for w in workers:
        assert w["gpu_ids"] == [0, 1]
        assert engine_env(w["pid"])["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert ask(srv, "tp")
    with srv.api() as c:
        gpus = c.get("/api/gpus").json()
    held = {g["worker"] for n in gpus["nodes"] for g in n["gpus"] if g["worker"]}
    assert held == {w["id"] for w in workers}
    # `torpor gpus` shows the same per node: each worker on its own node, by address.
    cli = subprocess.run(
        [sys.executable, "-m", "torpor", "gpus", "--url", srv.url, "--api-key", srv.admin_key],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert cli.returncode == 0, cli.stderr
    for w in workers:
        line = next(x for x in cli.stdout.splitlines() if w["id"] in x)
        assert w["node"][:8] in line and RAY_NODE_IP in line, line
    with srv.api() as c:
        assert c.delete("/api/deployments/tp").status_code == 200


def test_cold_start_from_zero_through_ray_holds_the_request(
    ray_cluster: RayCluster, server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    srv = server_factory(env=ray_env(ray_cluster, tmp_path))
    srv.deploy(ray_spec("cold", gpus=1, min_workers=0, max_workers=1))
    srv.wait_for("cold", lambda d: d["status"] == "scaled_to_zero")
    assert ask(srv, "cold")
    dep = srv.get("cold")
    (w,) = healthy(dep)
    assert w["node"] not in (None, "local")
    with srv.api() as c:
        logs = c.get("/api/deployments/cold/logs", params={"tail": 50}).text
    assert f"torpor: starting worker on {w['host']}" in logs


def test_a_gpu_type_the_cluster_lacks_stays_pending_and_requests_get_503(
    ray_cluster: RayCluster, server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    srv = server_factory(env=ray_env(ray_cluster, tmp_path))
    srv.deploy(ray_spec("h100", gpus=1, gpu_type="H100", wait_time_s=3))
    srv.wait_for("h100", lambda d: d["status"] == "scaled_to_zero")
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(ask, srv, "h100")
        dep = srv.wait_for(
            "h100",
            lambda d: any(
                "waiting for cluster resources" in (w["reason"] or "") for w in d["workers"]
            ),
        )
        (w,) = dep["workers"]
        assert w["state"] == "provisioning" and "accelerator_type:H100" in w["reason"]
        assert dep["status"] == "starting"
        with pytest.raises(openai.APIStatusError) as err:
            call.result()
    assert err.value.status_code == 503
    assert time.monotonic() - t0 >= 2.5


def test_sigkill_of_torpor_then_restart_adopts_the_running_actors(
    ray_cluster: RayCluster, server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = server_factory(data_dir=data, env=ray_env(ray_cluster, tmp_path))
    first.deploy(ray_spec("keep", gpus=1, min_workers=1, max_workers=1))
    (before,) = healthy(first.wait_for("keep", lambda d: len(healthy(d)) == 1, timeout=90))
    first.stop(signal.SIGKILL)
    assert psutil.pid_exists(before["pid"])  # the actor's engine outlives torpor

    second = server_factory(data_dir=data, env=ray_env(ray_cluster, tmp_path))
    dep = second.wait_for("keep", lambda d: len(healthy(d)) == 1, timeout=60)
    (after,) = healthy(dep)
    assert after["id"] == before["id"] and after["pid"] == before["pid"]
    assert ask(second, "keep")
    assert [w["id"] for w in second.get("keep")["workers"]] == [before["id"]]  # no cold start
    with second.api() as c:
        assert c.delete("/api/deployments/keep").status_code == 200
    deadline = time.monotonic() + 20
    while psutil.pid_exists(before["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(before["pid"])


@pytest.mark.llama
def test_llama_cpp_through_ray_answers_the_openai_sdk(
    ray_cluster: RayCluster, server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    srv = server_factory(env=ray_env(ray_cluster, tmp_path))
    srv.deploy(llama_spec("tiny", gpus=0, wait_time_s=120))
    r = srv.openai().chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=8,  # type: ignore[arg-type]
    )
    assert r.choices[0].message.content
    (w,) = healthy(srv.get("tiny"))
    assert w["node"] not in (None, "local")


def test_losing_a_node_under_traffic_replaces_its_worker_with_no_failed_request(
    ray_cluster: RayCluster, server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    # Last in this module: it takes one GPU node out of the session's cluster.
    srv = server_factory(env=ray_env(ray_cluster, tmp_path))
    srv.deploy(ray_spec("ha", gpus=2, min_workers=1, max_workers=1, wait_time_s=60))
    (w,) = healthy(srv.wait_for("ha", lambda d: len(healthy(d)) == 1, timeout=90))
    client = srv.openai(timeout=90)
    stop_at = [0.0]

    def traffic() -> int:
        ok = 0
        while stop_at[0] == 0.0 or time.monotonic() < stop_at[0]:
            client.chat.completions.create(model="ha", messages=MESSAGES)  # type: ignore[arg-type]
            ok += 1
        return ok

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(traffic) for _ in range(4)]
        time.sleep(0.5)  # traffic flowing before the node goes
        kill_node_of(ray_cluster, w["pid"])
        dep = srv.wait_for("ha", lambda d: any(x["id"] != w["id"] for x in healthy(d)), timeout=90)
        stop_at[0] = time.monotonic() + 1.0
        served = [r.result() for r in runs]  # raises if any request failed
    assert all(n > 0 for n in served)
    (new,) = healthy(dep)
    assert new["node"] != w["node"]
    lost = next(x for x in dep["workers"] if x["id"] == w["id"])
    assert lost["state"] == "failed" and lost["reason"] == "node lost"
