"""The real llama.cpp engine with the bundled SmolLM2 model, driven through `torpor serve`
with the official openai SDK: chat, streaming, scale to zero, cold starts, bursts, crashes."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.conftest import TorporServer, llama_spec

pytestmark = pytest.mark.llama
MESSAGES = [{"role": "user", "content": "Say hello in three words."}]


def test_llama_cpp_is_installed() -> None:
    # The embedded engine must be present: a missing engine fails here, loudly.
    import llama_cpp.server  # noqa: F401

    from torpor.models import bundled_model_path

    assert bundled_model_path().stat().st_size > 50_000_000


def test_default_deployment_chat_and_stream(server: TorporServer) -> None:
    dep = server.get("smollm2")
    assert dep["status"] == "scaled_to_zero" and dep["min_workers"] == 0
    client = server.openai()

    resp = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=16)  # type: ignore[arg-type]
    assert resp.model == "smollm2"
    assert resp.choices[0].message.content
    assert resp.usage is not None and resp.usage.completion_tokens > 0

    chunks = []
    stream = client.chat.completions.create(
        model="smollm2",
        messages=MESSAGES,
        max_tokens=16,
        stream=True,  # type: ignore[arg-type]
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks.append(chunk.choices[0].delta.content)
    assert len(chunks) > 2  # token by token, not one blob
    assert "".join(chunks).strip()

    completion = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=5)
    assert completion.choices[0].text


def test_scale_to_zero_then_cold_start(server: TorporServer) -> None:
    server.deploy(llama_spec("sleepy", idle_timeout_s=1))
    client = server.openai()
    first = client.chat.completions.with_raw_response.create(
        model="sleepy",
        messages=MESSAGES,
        max_tokens=4,  # type: ignore[arg-type]
    )
    first_worker = first.headers["x-torpor-worker"]
    dep = server.wait_for("sleepy", lambda d: d["status"] == "scaled_to_zero", timeout=20)
    stopped = next(w for w in dep["workers"] if w["id"] == first_worker)
    assert stopped["state"] == "stopped" and stopped["reason"] == "idle"

    started = time.monotonic()
    second = client.chat.completions.with_raw_response.create(
        model="sleepy",
        messages=MESSAGES,
        max_tokens=4,  # type: ignore[arg-type]
    )
    assert second.parse().choices[0].message.content
    assert second.headers["x-torpor-worker"] != first_worker
    assert time.monotonic() - started < 30


def test_burst_on_cold_deployment_all_complete(server: TorporServer) -> None:
    server.deploy(llama_spec("burst", max_workers=2, concurrency=2, wait_time_s=120))
    client = server.openai(timeout=120)

    def ask(i: int) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="burst",
            messages=[{"role": "user", "content": f"Count to {i}"}],
            max_tokens=8,  # type: ignore[arg-type]
        )
        assert raw.parse().choices[0].message.content is not None
        return str(raw.headers["x-torpor-worker"])

    with ThreadPoolExecutor(20) as pool:
        workers = list(pool.map(ask, range(20)))
    assert len(workers) == 20
    assert len(set(workers)) == 2  # scaled to max_workers, and both served


def test_kill_9_worker_mid_traffic_recovers(server: TorporServer) -> None:
    server.deploy(llama_spec("tough", min_workers=1, max_workers=1, concurrency=2))
    dep = server.wait_for("tough", lambda d: d["status"] == "ready", timeout=30)
    victim = dep["workers"][0]
    stop, results = threading.Event(), []

    def traffic() -> None:
        client = server.openai(timeout=60)
        while not stop.is_set():
            try:
                r = client.chat.completions.create(model="tough", messages=MESSAGES, max_tokens=8)  # type: ignore[arg-type]
                results.append(r.choices[0].message.content)
            except Exception as exc:
                results.append(exc)

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    os.kill(victim["pid"], signal.SIGKILL)
    healed = server.wait_for(
        "tough",
        lambda d: (
            d["status"] in ("ready", "degraded")
            and any(w["state"] == "healthy" and w["id"] != victim["id"] for w in d["workers"])
        ),
        timeout=30,
    )
    # Traffic goes on after the recovery: wait for answers from the replacement.
    after_heal = len(results)
    deadline = time.monotonic() + 30
    while len(results) < after_heal + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    dead = next(w for w in healed["workers"] if w["id"] == victim["id"])
    assert dead["state"] == "failed" and dead["exit_code"] == -9
    errors = [r for r in results if not isinstance(r, str)]
    # Requests on the killed worker are retried on its replacement: none is lost.
    assert errors == []
    assert len(results) >= after_heal + 3
    assert server.wait_for("tough", lambda d: d["status"] == "ready", timeout=10)


def test_missing_model_path_fails_with_reason(server: TorporServer) -> None:
    server.deploy(llama_spec("nomodel", model="/nonexistent/model.gguf"))
    dep = server.wait_for("nomodel", lambda d: d["state"] == "failed")
    assert dep["status"] == "error"
    assert dep["reason"] == "model file not found: /nonexistent/model.gguf"
    with pytest.raises(openai.NotFoundError) as err:
        server.openai().chat.completions.create(model="nomodel", messages=MESSAGES)  # type: ignore[arg-type]
    assert "model file not found" in str(err.value)
    # Fixing the spec recovers the deployment.
    fixed = server.patch("nomodel", {"model": "smollm2-135m-instruct"})
    assert fixed["spec_version"] == 2
    server.wait_for("nomodel", lambda d: d["state"] == "running")
    r = server.openai().chat.completions.create(model="nomodel", messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
    assert r.choices[0].message.content is not None


def test_concurrent_streams_on_one_worker_all_finish(server: TorporServer) -> None:
    # Four slots on one llama-cpp-python worker: the engine runs them one by one, and none
    # may cut off another's stream.
    server.deploy(llama_spec("streams", min_workers=1, max_workers=1, concurrency=4))
    server.wait_for("streams", lambda d: d["status"] == "ready", timeout=30)
    client = server.openai(timeout=120)

    def stream(i: int) -> tuple[str, str | None]:
        chunks = list(
            client.chat.completions.create(
                model="streams",
                messages=[{"role": "user", "content": f"Name {i + 2} colours."}],
                max_tokens=12,
                stream=True,
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = next(
            (
                c.choices[0].finish_reason
                for c in chunks
                if c.choices and c.choices[0].finish_reason
            ),
            None,
        )
        return text, finish

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(stream, range(6)))
    assert all(text and finish in ("stop", "length") for text, finish in results), results
