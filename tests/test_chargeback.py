"""GPU time in budgets and chargeback per key, through a real `torpor serve` with declared
GPUs at $1 per GPU-second: GPU time alone exhausts a deployment's budget; two keys' busy
time is attributed 3:1; the keys' GPU-seconds plus the deployment's own (idle, start-up)
equal the worker's billed time; after a SIGKILL a session is billed to its heartbeat."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.conftest import TorporServer, fake_spec

PROMPT = [{"role": "user", "content": "hello"}]
GPU_ENV = {
    "TORPOR_CREATE_DEFAULT_DEPLOYMENT": "false",
    "TORPOR_GPUS": "2xA100-80GB",
    "TORPOR_GPU_HOURLY_USD": json.dumps({"A100-80GB": 3600.0}),  # $1 per GPU-second
}


def by_key(srv: TorporServer, key: str | None = None, **params: str) -> dict[str, Any]:
    with srv.api(key) as c:
        r = c.get("/api/usage/by-key", params=params)
        assert r.status_code == 200, r.text
        return dict(r.json())


def new_key(srv: TorporServer, name: str, **fields: Any) -> tuple[str, str]:
    with srv.api() as c:
        r = c.post("/api/keys", json={"name": name, **fields})
        assert r.status_code == 201, r.text
        return r.json()["key"], r.json()["id"]


def test_gpu_time_alone_exhausts_a_deployment_budget(
    server_factory: Callable[..., TorporServer],
) -> None:
    srv = server_factory(env={**GPU_ENV, "TORPOR_GPU_HEARTBEAT_S": "0.5"})
    srv.deploy(fake_spec("gpu-capped", gpus=1, min_workers=1, budget_usd_monthly=3.0))
    srv.wait_for("gpu-capped", lambda d: d["status"] == "ready")
    client = srv.openai()
    deadline = time.monotonic() + 30
    while True:  # each request costs a few micro-dollars of tokens; the worker $1 a second
        try:
            client.chat.completions.create(model="gpu-capped", messages=PROMPT)  # type: ignore[arg-type]
        except openai.RateLimitError as exc:
            assert isinstance(exc.body, dict) and exc.body["type"] == "budget_exceeded"
            assert "Budget exceeded for deployment 'gpu-capped'" in exc.body["message"]
            break
        assert time.monotonic() < deadline, "the GPU time never reached the budget"
        time.sleep(0.2)
    with srv.api() as c:
        lines = [ln for ln in c.get("/api/invoices").json()["data"]
                 if ln["deployment"] == "gpu-capped"]  # fmt: skip
    assert sum(ln["gpu_cost"] for ln in lines) >= 3.0
    assert sum(ln["token_cost"] for ln in lines) < 0.001  # GPU time alone
    # A scale-up is refused with the reason; the worker min_workers keeps stays alone.
    srv.patch("gpu-capped", {"min_workers": 2, "max_workers": 2})
    view = srv.wait_for("gpu-capped", lambda d: "scale-up refused" in (d.get("reason") or ""))
    assert "Budget exceeded for deployment 'gpu-capped'" in view["reason"]
    assert len([w for w in view["workers"] if w["state"] in ("provisioning", "healthy")]) == 1


def test_busy_time_is_charged_to_keys_3_to_1_and_sums_to_the_billed_time(
    server_factory: Callable[..., TorporServer],
) -> None:
    srv = server_factory(env={**GPU_ENV, "TORPOR_GPU_HEARTBEAT_S": "0.5"})
    # 40 tokens 50 ms apart: every request is busy for 2 s on the worker.
    srv.deploy(fake_spec("shared-gpu", gpus=1, concurrency=8, idle_timeout_s=300,
                         engine_args="--tokens 40 --token-delay-ms 50"))  # fmt: skip
    heavy, heavy_id = new_key(srv, "heavy")
    light, light_id = new_key(srv, "light")
    waker, waker_id = new_key(srv, "waker")
    # A third key's request wakes the deployment: the start-up is its cold-start share.
    srv.openai(waker).chat.completions.create(model="shared-gpu", messages=PROMPT, max_tokens=1)  # type: ignore[arg-type]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run(key: str) -> None:
        try:
            client = srv.openai(key)
            for _ in range(2):  # two rounds, all four requests starting together
                barrier.wait(timeout=30)
                client.chat.completions.create(model="shared-gpu", messages=PROMPT)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in (heavy, heavy, heavy, light)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    # Stop the worker so every second of it is accrued, then read (no flush needed).
    srv.patch("shared-gpu", {"idle_timeout_s": 0.5})
    srv.wait_for("shared-gpu", lambda d: d["status"] == "scaled_to_zero", timeout=30)
    report = by_key(srv)
    lines = {ln["key_id"]: ln for ln in report["data"]}
    h, lt = lines[heavy_id]["gpu_seconds"], lines[light_id]["gpu_seconds"]
    # 12 s of heavy requests and 4 s of light ones in 4 s of busy time.
    assert h / lt == pytest.approx(3.0, rel=0.05), (h, lt)
    w = lines[waker_id]["gpu_seconds"]
    own = next(d for d in report["deployments"] if d["deployment"] == "shared-gpu")
    assert own["startup_gpu_seconds"] > 0 and own["idle_gpu_seconds"] > 0
    assert h + lt + w + own["gpu_seconds"] == pytest.approx(own["billed_gpu_seconds"], rel=1e-6)
    assert lines[waker_id]["cold_start_gpu_seconds"] == pytest.approx(own["startup_gpu_seconds"])
    assert (
        lines[heavy_id]["cold_start_gpu_seconds"] == lines[light_id]["cold_start_gpu_seconds"] == 0
    )
    assert lines[heavy_id]["gpu_cost"] == pytest.approx(h, rel=1e-6)  # $1 per GPU-second
    # The invoice carries the same per key, and a key sees only its own line.
    with srv.api() as c:
        inv = {ln["key_id"]: ln for ln in c.get("/api/invoices").json()["data"]
               if ln["deployment"] == "shared-gpu"}  # fmt: skip
    assert inv[heavy_id]["gpu_hours"] * 3600 == pytest.approx(h, rel=1e-6)
    assert inv[None]["gpu_hours"] * 3600 == pytest.approx(own["gpu_seconds"], rel=1e-6)
    mine = by_key(srv, light)
    assert [ln["key_id"] for ln in mine["data"]] == [light_id] and mine["deployments"] == []


def test_a_crash_bills_the_session_up_to_its_last_heartbeat(
    server_factory: Callable[..., TorporServer],
) -> None:
    srv = server_factory(env=GPU_ENV)  # the default heartbeat: every 10 s
    srv.deploy(fake_spec("crashed", gpus=1, idle_timeout_s=600))
    srv.openai().chat.completions.create(model="crashed", messages=PROMPT)  # type: ignore[arg-type]
    worker = srv.get("crashed")["workers"][0]
    started = time.monotonic()
    deadline = started + 60
    while time.monotonic() < deadline:  # the worker runs for 60 s
        assert srv.get("crashed")["workers"][0]["id"] == worker["id"]
        time.sleep(1)
    assert srv.proc is not None
    children = [psutil.Process(p) for p in srv.worker_pids()]
    srv.stop(signal.SIGKILL)
    for child in children:  # the whole host went down: the worker with it
        child.kill()
    psutil.wait_procs(children, timeout=10)
    again = server_factory(data_dir=srv.data_dir, env=GPU_ENV)
    own = next(d for d in by_key(again)["deployments"] if d["deployment"] == "crashed")
    assert 45.0 <= own["billed_gpu_seconds"] <= 62.0, own
    # The accrued GPU time ends at the same heartbeat as the session.
    with httpx.Client(base_url=again.url, headers={"Authorization": f"Bearer {again.admin_key}"}) as c:  # fmt: skip
        lines = [ln for ln in c.get("/api/invoices").json()["data"] if ln["deployment"] == "crashed"]  # fmt: skip
    assert sum(ln["gpu_hours"] for ln in lines) * 3600 == pytest.approx(
        own["billed_gpu_seconds"], rel=1e-6
    )
