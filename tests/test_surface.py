"""The OpenAI surface against `torpor serve` with fake engines (real processes, the official
SDK): models.retrieve, engine reasons in the envelope, one 504 for a hung worker, and
graceful shutdown with requests queued and in flight."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TorporServer, fake_spec

MESSAGES: Any = [{"role": "user", "content": "hi"}]


def _message(exc: openai.APIStatusError) -> str:
    return str(exc.response.json()["error"]["message"])


def test_models_retrieve_is_scoped_like_the_list(server: TorporServer) -> None:
    server.deploy(fake_spec("fake-a"))
    server.deploy(fake_spec("fake-b"))
    client = server.openai()
    model = client.models.retrieve("fake-a")
    assert model.id == "fake-a" and model.object == "model" and model.owned_by == "torpor"
    with pytest.raises(openai.NotFoundError) as nf:
        client.models.retrieve("no-such")
    assert "does not exist" in str(nf.value)
    # The per-deployment base URL answers for its own deployment only.
    scoped = openai.OpenAI(
        base_url=server.url + "/openai/fake-a/v1", api_key=server.admin_key, max_retries=0
    )
    assert scoped.models.retrieve("fake-a").id == "fake-a"
    with pytest.raises(openai.NotFoundError):
        scoped.models.retrieve("fake-b")
    # A key limited to one deployment does not see the other.
    with server.api() as c:
        r = c.post("/api/keys", json={"name": "only-b", "deployments": ["fake-b"]})
        assert r.status_code == 201, r.text
        limited = server.openai(r.json()["key"])
    assert limited.models.retrieve("fake-b").id == "fake-b"
    with pytest.raises(openai.NotFoundError):
        limited.models.retrieve("fake-a")


def test_engine_reasons_reach_the_caller_in_the_envelope(server: TorporServer) -> None:
    server.deploy(fake_spec("plain500", engine_args="--fail-mode http500-text", min_workers=1))
    server.deploy(fake_spec("json500", engine_args="--fail-mode http500", min_workers=1))
    for name in ("plain500", "json500"):
        server.wait_for(name, lambda d: d["status"] == "ready")
    client = server.openai()

    with pytest.raises(openai.APIStatusError) as text500:
        client.chat.completions.create(model="plain500", messages=MESSAGES)
    assert text500.value.status_code == 502
    assert _message(text500.value) == "Worker error: Internal Server Error"

    with pytest.raises(openai.APIStatusError) as json500:
        client.chat.completions.create(model="json500", messages=MESSAGES)
    assert json500.value.status_code == 502
    assert _message(json500.value) == "Worker error: fake engine failed on purpose"
    assert "retry" not in _message(json500.value)

    # The engine's plain-text 404 (an admin key may reach any route) is an envelope now.
    r = httpx.get(
        server.url + "/openai/json500/v1/no-such-route",
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "not_found"
    assert err["message"] == (
        "Route /v1/no-such-route is not served by this deployment's engine (404: Not Found)"
    )


def test_hung_worker_gives_one_504_after_the_timeout(server_factory: Any) -> None:
    server = server_factory(env={"TORPOR_REQUEST_TIMEOUT_S": "3"})
    server.deploy(fake_spec("hung", engine_args="--fail-mode hang", min_workers=1))
    dep = server.wait_for("hung", lambda d: d["status"] == "ready")
    engine = f"http://127.0.0.1:{dep['workers'][0]['port']}"
    client = server.openai(timeout=60)

    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as gw:
        client.chat.completions.create(model="hung", messages=MESSAGES)
    took = time.monotonic() - started
    assert gw.value.status_code == 504
    assert gw.value.code == "inference_timeout"
    assert "Inference timed out after 3s" in _message(gw.value)
    assert 2.9 < took < 5.0
    # Sent once, never again to the same (or another) worker.
    assert httpx.get(engine + "/stats").json()["requests"] == 1

    # A stream whose engine never sent its headers gets the same 504, once.
    started = time.monotonic()
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "hung", "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=30,
    )
    assert r.status_code == 504 and r.json()["error"]["code"] == "inference_timeout"
    assert time.monotonic() - started < 5.0
    assert httpx.get(engine + "/stats").json()["requests"] == 2
    # The worker was not taken out of routing blind: it still takes requests.
    assert server.get("hung")["status"] == "ready"


def test_sigterm_answers_queued_requests_503_and_lets_inflight_finish(
    server_factory: Any,
) -> None:
    server = server_factory(env={"TORPOR_SHUTDOWN_GRACE_S": "10"})
    server.deploy(
        fake_spec(
            "slow",
            engine_args="--tokens 2 --first-token-delay-ms 1500",
            min_workers=1,
            max_workers=1,
            concurrency=1,
        )
    )
    server.wait_for("slow", lambda d: d["status"] == "ready")
    results: dict[str, Any] = {}

    def call(name: str, stream: bool) -> None:
        body = {"model": "slow", "messages": MESSAGES, "stream": stream}
        with httpx.stream(
            "POST",
            server.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {server.admin_key}"},
            timeout=30,
        ) as r:
            results[name] = (r.status_code, dict(r.headers), r.read().decode())

    threads = [threading.Thread(target=call, args=("inflight", False))]
    threads[0].start()
    server.wait_for("slow", lambda d: d["queue"]["inflight"] == 1)
    threads += [
        threading.Thread(target=call, args=("queued", False)),
        threading.Thread(target=call, args=("queued_stream", True)),
    ]
    for t in threads[1:]:
        t.start()
    server.wait_for("slow", lambda d: d["queue"]["waiting"] == 2)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=20)

    status, headers, body = results["queued"]
    assert status == 503 and headers["retry-after"] == "5"
    assert json.loads(body)["error"]["code"] == "shutting_down"
    status, _, body = results["queued_stream"]
    events = [line for line in body.splitlines() if line.startswith("data:")]
    assert status == 200 and json.loads(events[-1][5:])["error"]["code"] == "shutting_down"
    status, _, body = results["inflight"]
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "tok0 tok1 "
    assert server.proc.wait(timeout=20) in (0, -signal.SIGTERM)
    log = server.log()
    assert "Traceback" not in log and "Internal Server Error" not in log


def test_sigterm_grace_over_ends_a_stream_with_an_error_event(server_factory: Any) -> None:
    server = server_factory(env={"TORPOR_SHUTDOWN_GRACE_S": "1"})
    server.deploy(fake_spec("long", engine_args="--tokens 100 --token-delay-ms 100", min_workers=1))
    server.wait_for("long", lambda d: d["status"] == "ready")
    stream = server.openai().chat.completions.create(model="long", messages=MESSAGES, stream=True)
    first = next(iter(stream))
    assert first.choices
    assert server.proc is not None
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    with pytest.raises(openai.APIError) as err:
        for _ in stream:
            pass
    assert "shutting down" in str(err.value)
    assert time.monotonic() - started < 4
    assert server.proc.wait(timeout=20) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.log()


def test_client_hangup_logs_one_line_not_a_traceback(server: TorporServer) -> None:
    server.deploy(fake_spec("drip", engine_args="--tokens 50 --token-delay-ms 50", min_workers=1))
    server.wait_for("drip", lambda d: d["status"] == "ready")
    stream = server.openai().chat.completions.create(model="drip", messages=MESSAGES, stream=True)
    next(iter(stream))
    stream.close()
    server.wait_for("drip", lambda d: d["queue"]["inflight"] == 0, timeout=5)
    log = server.log()
    assert "client hung up: POST /v1/chat/completions" in log
    assert "Traceback" not in log and "CancelledError" not in log
