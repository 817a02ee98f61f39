"""Sleep in billing and in the usage records, through a real `torpor serve` with declared
GPUs: a worker that sleeps for a measured interval is billed those seconds as sleeping time
at the deployment's sleeping rate (set apart from the awake rate to tell them apart); the
request that woke it says so in its usage record with the wake's length; /api/fleet counts
the wakes and shows the last one's latency."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import TorporServer, fake_spec

PROMPT = [{"role": "user", "content": "hello"}]
AWAKE_USD_PER_S = 1.0
SLEEPING_USD_PER_S = 0.1
GPU_ENV = {
    "TORPOR_CREATE_DEFAULT_DEPLOYMENT": "false",
    "TORPOR_GPUS": "1xA100-80GB",
    "TORPOR_GPU_HOURLY_USD": json.dumps({"A100-80GB": AWAKE_USD_PER_S * 3600}),
    "TORPOR_GPU_HEARTBEAT_S": "0.5",
}
# How much longer than the test saw it the worker may have slept: the view is polled every
# 50 ms, and the wake starts once the controller hears of the waiting request.
SLEEP_SLACK_S = 1.0


def invoice_lines(srv: TorporServer, name: str) -> list[dict[str, Any]]:
    with srv.api() as c:
        r = c.get("/api/invoices")
        assert r.status_code == 200, r.text
        return [ln for ln in r.json()["data"] if ln["deployment"] == name]


def test_sleeping_seconds_billed_at_the_sleeping_rate_and_the_wake_recorded(
    server_factory: Callable[..., TorporServer],
) -> None:
    srv = server_factory(env=GPU_ENV)
    name = "napper"
    srv.deploy(
        fake_spec(
            name,
            gpus=1,
            sleep_after_s=1,
            idle_timeout_s=300,
            prices={"gpu_hourly_sleeping": SLEEPING_USD_PER_S * 3600},
        )
    )
    client = srv.openai()
    client.chat.completions.create(model=name, messages=PROMPT)  # type: ignore[arg-type]

    srv.wait_for(name, lambda d: any(w["state"] == "sleeping" for w in d["workers"]), 30)
    seen_asleep = time.monotonic()
    assert srv.get(name)["lifecycle"] == "sleeping"
    time.sleep(3.0)  # the interval measured: asleep all along
    sent = time.monotonic()
    client.chat.completions.create(model=name, messages=PROMPT)  # type: ignore[arg-type]
    inner = sent - seen_asleep

    # Billing: the deployment's own line carries the sleeping time; its GPU cost is its
    # awake seconds at the awake rate plus its sleeping seconds at the sleeping rate.
    lines = invoice_lines(srv, name)
    gpu_s = sum(ln["gpu_hours"] for ln in lines) * 3600
    slept_s = sum(ln["sleeping_gpu_hours"] for ln in lines) * 3600
    cost = sum(ln["gpu_cost"] for ln in lines)
    print(f"measured asleep {inner:.2f} s; billed {gpu_s:.2f} s, asleep {slept_s:.2f} s, ${cost}")
    assert inner <= slept_s <= inner + SLEEP_SLACK_S, (inner, slept_s)
    assert [ln["key_id"] for ln in lines if ln["sleeping_gpu_hours"]] == [None]
    expected = (gpu_s - slept_s) * AWAKE_USD_PER_S + slept_s * SLEEPING_USD_PER_S
    assert cost == pytest.approx(expected, rel=1e-3, abs=1e-5)
    # At the awake rate the same time would cost 0.9 $/s more: the rates are told apart.
    assert gpu_s * AWAKE_USD_PER_S - cost >= 0.9 * inner
    with srv.api() as c:
        own = [d for d in c.get("/api/usage/by-key").json()["deployments"]
               if d["deployment"] == name]  # fmt: skip
    assert own and own[0]["sleeping_gpu_seconds"] >= inner
    assert own[0]["idle_gpu_seconds"] >= own[0]["sleeping_gpu_seconds"]  # part of idle

    # The usage records: the first request waited for a cold start, the second for a wake.
    with srv.api() as c:
        metrics = c.get(f"/api/deployments/{name}/metrics").json()
        fleet = [r for r in c.get("/api/fleet").json()["data"] if r["deployment"] == name]
    assert metrics["total_requests"] == 2
    assert metrics["cold_start_requests"] == 1
    assert metrics["woke_requests"] == 1
    wake_ms = metrics["wake_ms"]["p50"]
    assert 0 < wake_ms < (time.monotonic() - sent) * 1000
    assert fleet[0]["wakes"] == 1
    assert fleet[0]["last_wake_ms"] == pytest.approx(wake_ms, abs=0.1)
    assert fleet[0]["workers"]["sleeping"] == 0 and fleet[0]["workers"]["ready"] == 1
