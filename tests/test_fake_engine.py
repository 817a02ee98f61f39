"""Tests of the fake OpenAI-compatible engine, run as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

READY_TIMEOUT_S = 10.0


def free_port() -> int:
    """Find a free loopback port by binding port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Engine:
    """One fake engine process on a free loopback port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_ENGINE_")}
        full_env.update(env or {})
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torpor.testing.fake_engine", "--port", str(self.port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Poll /health until it answers 200; return the seconds since the start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited early with code {self.proc.returncode}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1.0).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise AssertionError("fake engine did not become ready in time")

    def client(self) -> OpenAI:
        return OpenAI(base_url=f"{self.base}/v1", api_key="x", max_retries=0, timeout=10.0)

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.base}/stats", timeout=2.0)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=5)


@pytest.fixture
def start_engine() -> Iterator[Any]:
    engines: list[Engine] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True) -> Engine:
        engine = Engine(*args, env=env)
        engines.append(engine)
        if ready:
            engine.wait_ready()
        return engine

    yield start
    for engine in engines:
        engine.stop()


def _poll_stats(engine: Engine, key: str, minimum: int, timeout: float = 2.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    stats = engine.stats()
    while stats[key] < minimum and time.monotonic() < deadline:
        time.sleep(0.02)
        stats = engine.stats()
    return stats


def test_health_models_ready_line_and_pid_header(start_engine: Any) -> None:
    engine: Engine = start_engine("--model-id", "my-model")
    response = httpx.get(f"{engine.base}/health")
    assert response.json() == {"status": "ok"}
    assert response.headers["X-Fake-Engine-Pid"] == str(engine.proc.pid)
    assert engine.proc.stdout is not None
    assert engine.proc.stdout.readline().strip() == f"fake engine ready on port {engine.port}"

    models = engine.client().models.list()
    assert [m.id for m in models.data] == ["my-model"]

    stats = engine.stats()
    assert stats["pid"] == engine.proc.pid
    assert stats["requests"] == 0
    assert stats["last_request"] is None


def test_non_stream_chat_with_usage(start_engine: Any) -> None:
    engine: Engine = start_engine()
    raw = engine.client().chat.completions.with_raw_response.create(
        model="asked-model",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there world"},
        ],
    )
    assert raw.headers["X-Fake-Engine-Pid"] == str(engine.proc.pid)
    completion = raw.parse()
    assert completion.model == "asked-model"
    assert completion.choices[0].message.content == "".join(f"tok{k} " for k in range(8))
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 5
    assert completion.usage.completion_tokens == 8
    assert completion.usage.total_tokens == 13

    stats = engine.stats()
    assert stats["requests"] == 1
    assert stats["completed"] == 1
    assert stats["active"] == 0
    assert stats["last_request"]["model"] == "asked-model"


def test_streaming_cadence_and_include_usage(start_engine: Any) -> None:
    engine: Engine = start_engine("--tokens", "5", "--token-delay-ms", "50")
    client = engine.client()
    messages: Any = [{"role": "user", "content": "hi"}]

    stream = client.chat.completions.create(model="m", messages=messages, stream=True)
    chunks = []
    content_times = []
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            content_times.append(time.monotonic())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.model == "m" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert len(content_times) == 5
    assert content_times[-1] - content_times[0] >= 0.15  # chunks arrived one by one
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None and c.choices for c in chunks)  # no usage chunk unless asked

    stream = client.chat.completions.create(
        model="m", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens == 1
    assert sum(1 for c in chunks if c.usage is not None) == 1


def test_raw_sse_format(start_engine: Any) -> None:
    engine: Engine = start_engine("--tokens", "2")
    body = {"model": "m", "prompt": "a b", "stream": True}
    response = httpx.post(f"{engine.base}/v1/completions", json=body)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert "".join(p["choices"][0]["text"] for p in payloads) == "tok0 tok1 "
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


def test_max_tokens_caps(start_engine: Any) -> None:
    engine: Engine = start_engine()
    client = engine.client()
    messages: Any = [{"role": "user", "content": "hi"}]

    completion = client.chat.completions.create(model="m", messages=messages, max_tokens=3)
    assert completion.choices[0].message.content == "tok0 tok1 tok2 "
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3

    chunks = list(
        client.chat.completions.create(model="m", messages=messages, max_tokens=2, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 "
    assert chunks[-1].choices[0].finish_reason == "length"

    legacy = client.completions.create(model="m", prompt="one two three", max_tokens=1)
    assert legacy.choices[0].text == "tok0 "
    assert legacy.choices[0].finish_reason == "length"
    assert legacy.usage is not None
    assert legacy.usage.prompt_tokens == 3


def test_http400_mode(start_engine: Any) -> None:
    engine: Engine = start_engine("--fail-mode", "http400")
    with pytest.raises(openai.BadRequestError) as info:
        engine.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 400
    assert info.value.code == "fake_bad_request"
    assert info.value.type == "invalid_request_error"
    stats = engine.stats()
    assert stats["requests"] == 1
    assert stats["completed"] == 0


def test_http500_mode(start_engine: Any) -> None:
    engine: Engine = start_engine(env={"FAKE_ENGINE_FAIL_MODE": "http500"})
    with pytest.raises(openai.InternalServerError):
        engine.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )


def test_crash_on_start(start_engine: Any) -> None:
    engine: Engine = start_engine("--fail-mode", "crash-on-start", ready=False)
    _, err = engine.proc.communicate(timeout=READY_TIMEOUT_S)
    assert engine.proc.returncode == 3
    assert "fake engine: crashing on purpose" in err


def test_crash_after(start_engine: Any) -> None:
    engine: Engine = start_engine("--fail-mode", "crash-after:2")
    client = engine.client()
    messages: Any = [{"role": "user", "content": "hi"}]
    client.chat.completions.create(model="m", messages=messages)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=messages)
    assert engine.proc.wait(timeout=5) == 4


def test_stream_disconnect_is_counted(start_engine: Any) -> None:
    engine: Engine = start_engine("--tokens", "50", "--token-delay-ms", "50")
    stream = engine.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    stream.close()

    stats = _poll_stats(engine, "disconnected", 1)
    assert stats["disconnected"] == 1
    assert stats["completed"] == 0
    assert stats["active"] == 0


def test_non_stream_disconnect_is_counted(start_engine: Any) -> None:
    engine: Engine = start_engine("--fail-mode", "hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{engine.base}/v1/chat/completions", json={"model": "m"}, timeout=0.2)
    stats = _poll_stats(engine, "disconnected", 1)
    assert stats["disconnected"] == 1
    assert stats["requests"] == 1


def test_startup_delay_delays_health(start_engine: Any) -> None:
    engine: Engine = start_engine("--startup-delay-ms", "600", ready=False)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{engine.base}/health", timeout=1.0)
    assert engine.wait_ready() >= 0.6


def test_echo_header_returns_body(start_engine: Any) -> None:
    engine: Engine = start_engine()
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.25,
        "custom_field": [1, 2],
    }
    response = httpx.post(
        f"{engine.base}/v1/chat/completions", json=body, headers={"X-Fake-Echo": "1"}
    )
    assert response.status_code == 200
    assert response.headers["X-Fake-Engine-Pid"] == str(engine.proc.pid)
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == body

    completion = engine.client().chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"X-Fake-Echo": "1"},
        extra_body={"seed_extra": 7},
    )
    content = completion.choices[0].message.content
    assert content is not None
    assert json.loads(content)["seed_extra"] == 7
    assert engine.stats()["last_request"]["seed_extra"] == 7


def test_embeddings(start_engine: Any) -> None:
    engine: Engine = start_engine()
    client = engine.client()
    result = client.embeddings.create(model="m", input=["alpha beta", "gamma"])
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in result.data)
    assert result.usage.prompt_tokens == 3
    again = client.embeddings.create(model="m", input="alpha beta", encoding_format="float")
    assert again.data[0].embedding == pytest.approx(result.data[0].embedding, abs=1e-6)
    assert result.data[0].embedding != result.data[1].embedding


def test_env_config_and_cli_override(start_engine: Any) -> None:
    engine: Engine = start_engine(
        "--tokens",
        "2",
        env={
            "FAKE_ENGINE_TOKENS": "5",
            "FAKE_ENGINE_MODEL_ID": "env-model",
            "FAKE_ENGINE_THINK": "1",
        },
    )
    client = engine.client()
    assert [m.id for m in client.models.list().data] == ["env-model"]
    completion = client.chat.completions.create(
        messages=[{"role": "user", "content": "hi"}], model="env-model"
    )
    assert completion.choices[0].message.content == "<think>reasoning here</think>tok0 tok1 "


def test_sigterm_exits_promptly_with_requests_in_flight(start_engine: Any) -> None:
    engine: Engine = start_engine("--fail-mode", "hang")
    errors: list[BaseException] = []

    def hang() -> None:
        try:
            httpx.post(f"{engine.base}/v1/chat/completions", json={"stream": True}, timeout=5)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=hang, daemon=True)
    thread.start()
    _poll_stats(engine, "active", 1)
    assert engine.stats()["active"] == 1

    started = time.monotonic()
    engine.proc.send_signal(signal.SIGTERM)
    assert engine.proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 1.0
    thread.join(timeout=5)
