"""Cold start from zero on Ray vs local, same engine (the fake engine, no model load):
request sent at scale-to-zero → answer, repeated. The Ray cluster (a head and one node with
two declared GPUs, on this machine) is started and stopped by the bench.

    .venv/bin/python -m bench.ray_coldstart [repeats]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from tests.ray_fixture import RayCluster, _free_port

from bench.harness import ADMIN_KEY, PYTHON, Processes, start_torpor

BODY = {"model": "cold", "messages": [{"role": "user", "content": "hi"}]}


def _spec(gpus: int) -> dict[str, Any]:
    cmd = f"{PYTHON} -m torpor.testing.fake_engine --host {{host}} --port {{port}}"
    return {
        "name": "cold",
        "framework": "custom",
        "options": {"command": cmd, "health_path": "/health"},
        "min_workers": 0,
        "max_workers": 1,
        "gpus": gpus,
        "idle_timeout_s": 0.5,
    }


def _measure(url: str, gpus: int, repeats: int) -> list[float]:
    h = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, headers=h, timeout=120) as c:
        assert c.post("/api/deployments", json=_spec(gpus)).status_code == 201
        out = []
        for _ in range(repeats):
            deadline = time.monotonic() + 60
            while c.get("/api/deployments/cold").json()["status"] != "scaled_to_zero":
                if time.monotonic() > deadline:
                    raise RuntimeError("never scaled to zero")
                time.sleep(0.05)
            t = time.perf_counter()
            r = c.post("/v1/chat/completions", json=BODY)
            assert r.status_code == 200, r.text
            out.append((time.perf_counter() - t) * 1000)
        return out


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    result: dict[str, Any] = {}
    temp = Path(tempfile.mkdtemp(prefix="tpray-", dir="/tmp"))
    cluster = RayCluster(_free_port(), temp, gpu_nodes=1)
    with tempfile.TemporaryDirectory() as tmp:
        procs = Processes(Path(tmp))
        try:
            _run(procs, Path(tmp), cluster, repeats, result)
        finally:
            procs.close()
            cluster.stop()
    summary = {k: round(statistics.median(v), 1) for k, v in result.items()}
    summary["ray_overhead_ms"] = round(summary["ray_cpu_ms"] - summary["local_ms"], 1)
    print(json.dumps({"runs": result, "median_ms": summary}, indent=2))


def _run(
    procs: Processes, tmp: Path, cluster: RayCluster, repeats: int, result: dict[str, Any]
) -> None:
    local = start_torpor(procs, tmp / "local", "torpor-local")
    result["local_ms"] = _measure(local.url, 0, repeats)
    cluster.start()
    env = {"TORPOR_RUNTIME": "ray", "TORPOR_RAY_ADDRESS": cluster.address}
    env["TORPOR_NODE_CACHE"] = str(tmp / "node")
    ray = start_torpor(procs, tmp / "ray", "torpor-ray", env)
    result["ray_cpu_ms"] = _measure(ray.url, 0, repeats)
    with httpx.Client(base_url=ray.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        c.delete("/api/deployments/cold")
    result["ray_1gpu_ms"] = _measure(ray.url, 1, repeats)


if __name__ == "__main__":
    main()
