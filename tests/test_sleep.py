"""The sleep/wake ladder with real processes: a frozen llama.cpp worker, the fake engine's
vLLM sleep API, and the stop after idle_timeout_s."""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
import psutil

from tests.conftest import TorporServer, fake_spec, llama_spec


def workers_in(dep: dict[str, Any], state: str) -> list[dict[str, Any]]:
    return [w for w in dep["workers"] if w["state"] == state]


def ttft(server: TorporServer, model: str) -> float:
    """Seconds from sending a streamed chat request to its first content chunk."""
    client = server.openai()
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=4,
        stream=True,
    )
    first: float | None = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    assert first is not None, "no content streamed"
    return first


def sleeping(server: TorporServer, name: str, timeout: float = 30) -> dict[str, Any]:
    dep = server.wait_for(name, lambda d: bool(workers_in(d, "sleeping")), timeout)
    return dict(workers_in(dep, "sleeping")[0])


def test_llama_worker_freezes_wakes_fast_and_stops(server: TorporServer) -> None:
    name = "sleepy"
    server.deploy(llama_spec(name, sleep_after_s=2, idle_timeout_s=8))
    # Warm requests (the first one starts the worker).
    ttft(server, name)
    warm = [ttft(server, name) for _ in range(3)]

    woken = []
    for _ in range(3):
        t_idle = time.monotonic()
        w = sleeping(server, name)
        assert time.monotonic() - t_idle >= 1.5  # not before sleep_after_s (polling slack)
        proc = psutil.Process(w["pid"])
        # Frozen (the signal follows the state change at once): the process is stopped
        # and uses no CPU over a 2 s window.
        deadline = time.monotonic() + 2
        while proc.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.status() == psutil.STATUS_STOPPED
        before = proc.cpu_times()
        time.sleep(2.0)
        after = proc.cpu_times()
        assert (after.user + after.system) - (before.user + before.system) == 0.0
        assert server.get(name)["lifecycle"] == "sleeping"
        woken.append(ttft(server, name))
        dep = server.get(name)
        assert [x["id"] for x in workers_in(dep, "healthy")] == [w["id"]]  # same worker
    # Bound: the median TTFT after a wake is within 50 ms of the median warm TTFT.
    print(f"warm TTFT {warm}, after wake {woken}")
    assert statistics.median(woken) - statistics.median(warm) < 0.050, (warm, woken)
    healthy = workers_in(server.get(name), "healthy")[0]
    assert healthy["wakes"] == 3

    # Then idle: sleeping after 2 s, stopped after idle_timeout_s (8 s) from the last request.
    t_last = time.monotonic()
    sleeping(server, name)
    dep = server.wait_for(name, lambda d: not workers_in(d, "sleeping"), 30)
    assert time.monotonic() - t_last >= 7.5
    assert [w["state"] for w in dep["workers"]][:1] == ["stopped"]
    assert dep["workers"][0]["reason"] == "idle"
    assert dep["lifecycle"] == "cold"


def test_fake_vllm_sleep_api_wake_much_faster_than_boot(server: TorporServer) -> None:
    name = "vllmish"
    args = "--startup-delay-ms 3000 --sleep-delay-ms 300 --wake-delay-ms 300"
    spec = fake_spec(name, engine_args=args, sleep_after_s=1, idle_timeout_s=60)
    spec["options"]["sleep_api"] = "vllm"
    server.deploy(spec)
    client = server.openai()
    t0 = time.perf_counter()
    client.chat.completions.create(model=name, messages=[{"role": "user", "content": "a"}])
    boot = time.perf_counter() - t0

    w = sleeping(server, name)
    port = w["port"]
    # The engine really was put to sleep through its API (asleep: it would answer 503).
    stats = httpx.get(f"http://127.0.0.1:{port}/sleep_stats").json()
    deadline = time.monotonic() + 10
    while not stats["sleeping"] and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = httpx.get(f"http://127.0.0.1:{port}/sleep_stats").json()
    assert stats["sleeping"] and stats["calls"] == ["POST /sleep?level=1"]

    t0 = time.perf_counter()
    out = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "b"}])
    wake = time.perf_counter() - t0
    assert out.choices[0].message.content
    stats = httpx.get(f"http://127.0.0.1:{port}/sleep_stats").json()
    assert stats["calls"] == ["POST /sleep?level=1", "POST /wake_up"]
    assert stats["wakes"] == 1 and not stats["sleeping"]
    print(f"boot {boot:.2f} s, wake {wake:.2f} s")
    assert boot >= 3.0 and wake < boot / 3, (boot, wake)
    dep = server.get(name)
    healthy = workers_in(dep, "healthy")
    assert healthy and healthy[0]["id"] == w["id"] and healthy[0]["wakes"] == 1
    assert healthy[0]["last_wake_ms"] >= 300


def test_vllm_level_2_wake_reloads_weights_and_resets_prefix_cache(
    server: TorporServer,
) -> None:
    name = "level2"
    spec = fake_spec(name, sleep_after_s=0.5, sleep_level=2, idle_timeout_s=60)
    spec["options"]["sleep_api"] = "vllm"
    server.deploy(spec)
    client = server.openai()
    client.chat.completions.create(model=name, messages=[{"role": "user", "content": "a"}])
    w = sleeping(server, name)
    url = f"http://127.0.0.1:{w['port']}/sleep_stats"
    deadline = time.monotonic() + 10
    while not httpx.get(url).json()["sleeping"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.chat.completions.create(model=name, messages=[{"role": "user", "content": "b"}])
    assert httpx.get(url).json()["calls"] == [
        "POST /sleep?level=2",
        "POST /wake_up?tags=weights",
        "POST /collective_rpc",
        "POST /wake_up?tags=kv_cache",
        "POST /reset_prefix_cache",
    ]
