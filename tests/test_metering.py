"""Metering, billing and budgets through a real gateway: every token, GPU second and
dollar accounted, caps enforced, metrics exported."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TorporServer, fake_spec, llama_spec

MESSAGES = [{"role": "user", "content": "hello there"}]
PRICES = {"prompt_per_mtok": 1000.0, "completion_per_mtok": 2000.0}


def summary(srv: TorporServer, key: str | None = None, **params: str) -> dict[str, Any]:
    with srv.api(key) as c:
        r = c.get("/api/usage/summary", params={"window": "1h", **params})
        assert r.status_code == 200, r.text
        return dict(r.json())


def test_usage_equals_what_clients_received_and_costs_follow_rates(server: TorporServer) -> None:
    server.deploy(fake_spec("metered", engine_args="--tokens 6", min_workers=1, prices=PRICES))
    server.wait_for("metered", lambda d: d["status"] == "ready")
    client = server.openai()
    prompt = completion = 0
    for i in range(4):
        r = client.chat.completions.create(
            model="metered",
            messages=[{"role": "user", "content": "word " * (i + 1)}],  # type: ignore[list-item]
        )
        assert r.usage is not None
        prompt += r.usage.prompt_tokens
        completion += r.usage.completion_tokens
    for _ in range(3):
        stream = client.chat.completions.create(
            model="metered",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [c.usage for c in stream if c.usage is not None]
        assert len(usage) == 1
        prompt += usage[0].prompt_tokens
        completion += usage[0].completion_tokens

    # A stream that did not ask for usage is still metered, and sees no extra chunk.
    chunks = list(
        client.chat.completions.create(model="metered", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    )
    assert chunks and all(c.usage is None and c.choices for c in chunks)
    prompt += 2  # "hello there"
    completion += 6

    s = summary(server, deployment="metered")
    assert s["requests"] == 8
    assert (s["prompt_tokens"], s["completion_tokens"]) == (prompt, completion)
    assert s["cost"] == pytest.approx((prompt * 1000 + completion * 2000) / 1e6)
    assert s["avg_latency_ms"] > 0 and s["avg_ttft_ms"] > 0 and s["errors"] == 0

    with server.api() as c:
        rows = c.get("/api/usage/by-deployment", params={"window": "24h"}).json()["data"]
        row = next(r for r in rows if r["deployment"] == "metered")
        assert (row["requests"], row["total_tokens"]) == (8, prompt + completion)
        series = c.get(
            "/api/usage/timeseries", params={"window": "1h", "step": "5m", "deployment": "metered"}
        ).json()["data"]
        assert sum(b["requests"] for b in series) == 8
        assert sum(b["tokens"] for b in series) == prompt + completion
        hourly = c.get("/api/usage/timeseries", params={"window": "24h", "step": "1h"}).json()
        assert sum(b["requests"] for b in hourly["data"]) >= 8
        m = c.get("/api/deployments/metered/metrics", params={"window": "1h"}).json()
        assert m["total_requests"] == 8
        assert 0 < m["latency_ms"]["p50"] <= m["latency_ms"]["p95"] <= m["latency_ms"]["p99"]
        assert m["ttft_ms"]["p50"] > 0
        assert sum(p["value"] for p in m["rps"]) * m["step_s"] == pytest.approx(8, rel=1e-3)
        assert c.get("/api/usage/summary", params={"window": "2h"}).status_code == 400


def test_metrics_endpoint_parses_with_the_expected_series(server: TorporServer) -> None:
    server.deploy(fake_spec("scraped", min_workers=1))
    server.wait_for("scraped", lambda d: d["status"] == "ready")
    server.openai().chat.completions.create(model="scraped", messages=MESSAGES)  # type: ignore[arg-type]
    with server.api() as admin:  # /metrics needs an admin key unless made public
        text = admin.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "torpor_requests",
        "torpor_tokens",
        "torpor_request_latency_seconds",
        "torpor_time_to_first_token_seconds",
        "torpor_queue_depth",
        "torpor_workers",
        "torpor_cold_start_seconds",
        "torpor_cost_usd",
    ):
        assert name in families, name
    requests = [s for s in families["torpor_requests"].samples if s.name == "torpor_requests_total"]
    assert any(
        s.labels == {"deployment": "scraped", "status": "200"} and s.value == 1 for s in requests
    )
    workers = families["torpor_workers"].samples
    assert any(
        s.labels == {"deployment": "scraped", "state": "healthy"} and s.value == 1 for s in workers
    )
    starts = families["torpor_cold_start_seconds"].samples
    assert any(
        s.name.endswith("_count") and s.labels.get("deployment") == "scraped" and s.value == 1
        for s in starts
    )


def _key(srv: TorporServer, **fields: Any) -> tuple[str, str]:
    with srv.api() as c:
        r = c.post("/api/keys", json={"name": "capped", **fields})
        assert r.status_code == 201, r.text
        return r.json()["key"], r.json()["id"]


def test_budget_refuses_once_over_and_patch_raises_it(server: TorporServer) -> None:
    server.deploy(fake_spec("budgeted", engine_args="--tokens 4", min_workers=1))
    server.wait_for("budgeted", lambda d: d["status"] == "ready")
    key, key_id = _key(server, budget_tokens_monthly=60, plan_tokens=1000)
    client = server.openai(key)
    # Each request reserves its prompt's upper estimate (27 tokens for "hello there") plus
    # max_tokens (4), and spends 2 + 4. After five, 30 tokens are left: the sixth gets its
    # completion limit lowered to the 3 that fit; then 25 are left, too few for the prompt.
    done = [
        client.chat.completions.create(model="budgeted", messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
        for _ in range(6)
    ]
    assert [r.usage.completion_tokens for r in done if r.usage] == [4, 4, 4, 4, 4, 3]
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="budgeted", messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
    body = err.value.body
    assert isinstance(body, dict)
    assert body["type"] == "budget_exceeded" and body["code"] == "budget_exceeded"
    assert body["message"] == (
        "Budget exceeded for key 'capped': the prompt (up to 27 tokens) and 1 completion "
        "token(s) do not fit in the 25 tokens left of 60"
    )
    with server.api(key) as c:
        me = c.get("/api/me").json()
        assert me["usage_month"]["tokens"] == 35 and me["plan_tokens"] == 1000

    with server.api() as c:
        r = c.patch(f"/api/keys/{key_id}", json={"budget_tokens_monthly": 120})
        assert r.status_code == 200 and r.json()["budget_tokens_monthly"] == 120
    client.chat.completions.create(model="budgeted", messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]

    # A deployment-wide cap in dollars, through the spec.
    server.patch("budgeted", {"budget_usd_monthly": 0.0})
    with pytest.raises(openai.RateLimitError) as dep_err:
        server.openai().chat.completions.create(model="budgeted", messages=MESSAGES)  # type: ignore[arg-type]
    assert "Budget exceeded for deployment 'budgeted'" in str(dep_err.value)


def test_concurrent_requests_cannot_all_slip_under_a_cap(server: TorporServer) -> None:
    server.deploy(
        fake_spec(
            "rush",
            engine_args="--tokens 4 --token-delay-ms 50",
            min_workers=1,
            concurrency=64,
            max_queue=64,
        )
    )
    server.wait_for("rush", lambda d: d["status"] == "ready")
    cap = 100
    key, _ = _key(server, budget_tokens_monthly=cap)
    client = server.openai(key)

    def call(_: int) -> str:
        try:
            client.chat.completions.create(model="rush", messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
            return "ok"
        except openai.RateLimitError as exc:
            assert isinstance(exc.body, dict) and exc.body["type"] == "budget_exceeded"
            return "refused"

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(call, range(50)))
    ok = outcomes.count("ok")
    spent = summary(server, key)["total_tokens"]
    assert spent == ok * 6
    # Each admitted request reserves its max_tokens (4): at most cap / 4 run at once, so
    # the overshoot is bounded by those in flight (6 tokens each), not by all 50.
    assert ok <= cap // 4
    assert spent <= cap + (cap // 4) * 6
    assert outcomes.count("refused") == 50 - ok >= 20


def test_gpu_seconds_and_storage_billed_for_a_deployment_that_scaled_to_zero(
    server_factory: Callable[..., TorporServer],
) -> None:
    srv = server_factory(
        env={
            "TORPOR_GPUS": "2xA100-80GB",
            "TORPOR_GPU_HOURLY_USD": json.dumps({"A100-80GB": 3600.0}),  # $1 per GPU-second
            "TORPOR_STORAGE_SAMPLE_INTERVAL_S": "0.3",
            "TORPOR_STORAGE_GB_MONTH_USD": "1000000",
        }
    )
    srv.deploy(fake_spec("gpu-dep", gpus=2, idle_timeout_s=1.5))
    srv.openai().chat.completions.create(model="gpu-dep", messages=MESSAGES)  # type: ignore[arg-type]
    with srv.api() as c:
        fleet = {f["deployment"]: f for f in c.get("/api/fleet").json()["data"]}
        assert fleet["gpu-dep"]["lifecycle"] == "active"
        assert fleet["gpu-dep"]["gpu_kind"] == "A100-80GB"
        assert fleet["gpu-dep"]["gpu_memory_mb"] == 2 * 80 * 1024
        assert fleet["gpu-dep"]["total_requests"] == 1
        assert fleet["gpu-dep"]["last_startup_s"] > 0
        assert fleet["smollm2"]["lifecycle"] == "cold"
    srv.wait_for("gpu-dep", lambda d: d["status"] == "scaled_to_zero", timeout=20)
    time.sleep(0.8)  # a storage sample and a flush after the stop
    with srv.api() as c:
        assert c.get("/api/fleet").json()["data"][0]["lifecycle"] == "cold"
        inv = c.get("/api/invoices").json()
        infra = next(
            ln for ln in inv["data"] if ln["deployment"] == "gpu-dep" and ln["key_id"] is None
        )
        tokens = next(ln for ln in inv["data"] if ln["deployment"] == "gpu-dep" and ln["key_id"])
        # The worker lived ~1.5-5 s on 2 GPUs.
        assert 2 * 1.5 / 3600 <= infra["gpu_hours"] <= 2 * 10 / 3600
        assert infra["gpu_cost"] == pytest.approx(infra["gpu_hours"] * 3600, rel=1e-6)
        # Money is rounded to 6 decimals: this tiny storage costs well under $0.000001.
        assert infra["storage_gb_months"] > 0
        assert abs(infra["storage_cost"] - infra["storage_gb_months"] * 1e6) <= 5e-7
        assert tokens["requests"] == 1 and tokens["token_cost"] > 0
        assert inv["total_cost"] == pytest.approx(sum(ln["total_cost"] for ln in inv["data"]))
        csv_text = c.get("/api/invoices", params={"format": "csv"}).text
        assert csv_text.splitlines()[0].startswith("key_id,key_name,deployment,requests")
        assert len(csv_text.splitlines()) == len(inv["data"]) + 1


def test_no_usage_lost_on_clean_shutdown_or_after_a_flush_interval_on_sigkill(
    server_factory: Callable[..., TorporServer],
) -> None:
    srv = server_factory()
    srv.deploy(fake_spec("durable", min_workers=1))
    srv.wait_for("durable", lambda d: d["status"] == "ready")
    for _ in range(7):
        srv.openai().chat.completions.create(model="durable", messages=MESSAGES)  # type: ignore[arg-type]
    srv.stop(signal.SIGTERM)  # straight after the requests: the last flush happens at exit
    again = server_factory(data_dir=srv.data_dir)
    assert summary(again, deployment="durable")["requests"] == 7

    again.wait_for("durable", lambda d: d["status"] == "ready")
    for _ in range(3):
        again.openai().chat.completions.create(model="durable", messages=MESSAGES)  # type: ignore[arg-type]
    time.sleep(1.2)  # one flush interval (documented: at most 1 s)
    again.stop(signal.SIGKILL)
    third = server_factory(data_dir=srv.data_dir)
    assert summary(third, deployment="durable")["requests"] == 10


def test_scoping_of_usage_to_the_callers_key(server: TorporServer) -> None:
    server.deploy(fake_spec("shared", min_workers=1))
    server.deploy(fake_spec("private"))
    server.wait_for("shared", lambda d: d["status"] == "ready")
    key, _ = _key(server, deployments=["shared"])
    server.openai().chat.completions.create(model="shared", messages=MESSAGES)  # type: ignore[arg-type]
    server.openai(key).chat.completions.create(model="shared", messages=MESSAGES)  # type: ignore[arg-type]
    assert summary(server)["requests"] == 2
    assert summary(server, key)["requests"] == 1  # only its own usage
    with server.api(key) as c:
        assert [f["deployment"] for f in c.get("/api/fleet").json()["data"]] == ["shared"]
        assert c.get("/api/usage/summary", params={"deployment": "private"}).status_code == 404
        inv = c.get("/api/invoices").json()["data"]
        assert inv and all(ln["key_id"] is not None and ln["deployment"] == "shared" for ln in inv)


@pytest.mark.llama
def test_llama_streams_are_metered_without_engine_usage(server: TorporServer) -> None:
    server.deploy(llama_spec("counted", min_workers=1))
    server.wait_for("counted", lambda d: d["status"] == "ready", timeout=30)
    client = server.openai()
    stream = client.chat.completions.create(
        model="counted",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    usage = [c.usage for c in chunks if c.usage is not None]
    # llama-cpp-python sends no usage chunk: torpor adds one made from the counted chunks.
    assert len(usage) == 1 and usage[0].completion_tokens == len(content)
    s = summary(server, deployment="counted")
    assert s["requests"] == 1 and s["completion_tokens"] == len(content)


def test_cli_usage_prints_the_summary_table(server: TorporServer) -> None:
    import os
    import subprocess
    import sys

    server.deploy(fake_spec("tabled", engine_args="--tokens 3", min_workers=1))
    server.wait_for("tabled", lambda d: d["status"] == "ready")
    for _ in range(2):
        server.openai().chat.completions.create(model="tabled", messages=MESSAGES)  # type: ignore[arg-type]
    env = {**os.environ, "TORPOR_URL": server.url, "TORPOR_API_KEY": server.admin_key,
           "COLUMNS": "200"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "torpor", "usage", "--window", "1h"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    row = next(line for line in out.splitlines() if "tabled" in line)
    assert row.split()[1:4] == ["2", "4", "6"]  # requests, prompt, completion tokens
    assert any(line.split()[:2] == ["TOTAL", "2"] for line in out.splitlines() if "TOTAL" in line)


def test_async_submit_over_budget_is_refused_at_once(server: TorporServer) -> None:
    server.deploy(fake_spec("async-capped", min_workers=1))
    key, _ = _key(server, budget_tokens_monthly=0)
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "async-capped", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {key}", "X-Async": "true"},
    )
    assert r.status_code == 429 and r.json()["error"]["type"] == "budget_exceeded"
    r = httpx.post(
        server.url + "/deployment/async-capped/v1/chat/completions",
        json={"input": {"messages": MESSAGES}},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 429 and r.json()["error"]["type"] == "budget_exceeded"


async def test_raw_events_past_retention_are_pruned_and_rollups_kept(tmp_path: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from torpor.metering.budget import Caps
    from torpor.metering.meter import Meter, RequestUsage
    from torpor.metering.metrics import Metrics
    from torpor.metering.pricing import Prices
    from torpor.metering.queries import Scope, summary
    from torpor.store import open_store

    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    now = datetime.now(UTC)
    meter = Meter(
        store,
        prices_for=lambda _: Prices(1.0, 1.0, 0.0, 0.0),
        caps_for_deployment=lambda _: Caps(),
        storage_dirs=dict,
        metrics=Metrics(),
        flush_interval_s=0.5,
        storage_interval_s=60,
        raw_retention_days=1,
        clock=lambda: now,
    )
    for age_h in (1, 30, 50):
        meter.record(RequestUsage(
            at=now - timedelta(hours=age_h), deployment="d", key_id="k", session_id=None,
            route="/v1/chat/completions", status=200, prompt_tokens=1, completion_tokens=2,
            estimated=False, ttft_ms=5.0, latency_ms=10.0, queue_ms=0.0, cold_start=False,
            stream=False,
        ))  # fmt: skip
    await meter.flush()
    assert await meter.prune() == 2  # the two older than one day
    week = await summary(store.engine, Scope(), timedelta(days=7), now)
    assert week["requests"] == 3  # the hourly rollups still hold them
    await store.close()
