"""Budgets with the engine's tokenizer: against the real llama.cpp worker (bundled SmolLM2)
through `torpor serve`, a request under a token budget reserves its prompt as the engine
counts it (torpor.llamacpp_worker's count route, which does not wait for the generation
in progress), so the spend never exceeds the cap, not even by an estimate's error."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import TorporServer

pytestmark = pytest.mark.llama
MESSAGES: Any = [{"role": "user", "content": "Say hello in three words."}]
N = 50


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorporServer]:
    data: Path = tmp_path_factory.mktemp("llama-budgets")
    server = TorporServer(data).start()
    try:
        server.patch("smollm2", {"min_workers": 1})
        server.wait_for("smollm2", lambda d: d["status"] == "ready", timeout=60)
        yield server
    finally:
        server.stop()
        assert server.survivors() == []


@pytest.fixture(scope="module")
def prompt_tokens(llama: TorporServer) -> int:
    """The prompt's tokens as the engine reports them (chat template and SmolLM2's default
    system message included)."""
    resp = llama.openai().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=1)
    assert resp.usage is not None and resp.usage.prompt_tokens > 20
    return resp.usage.prompt_tokens


def new_key(llama: TorporServer, tokens: int) -> tuple[str, str]:
    with llama.api() as c:
        r = c.post(
            "/api/keys", json={"name": f"k{time.monotonic_ns()}", "budget_tokens_monthly": tokens}
        )
        assert r.status_code == 201, r.text
        return r.json()["key"], r.json()["id"]


def spent(llama: TorporServer, key_id: str, requests: int) -> dict[str, int]:
    """The key's month-to-date tokens once `requests` are recorded."""
    deadline = time.monotonic() + 10
    while True:
        with llama.api() as c:
            lines = [ln for ln in c.get("/api/invoices").json()["data"] if ln["key_id"] == key_id]
        out = {
            "requests": sum(ln["requests"] for ln in lines),
            "prompt": sum(ln["prompt_tokens"] for ln in lines),
            "tokens": sum(ln["prompt_tokens"] + ln["completion_tokens"] for ln in lines),
        }
        if out["requests"] >= requests or time.monotonic() > deadline:
            assert out["requests"] == requests, out
            return out
        time.sleep(0.05)


def refusal(llama: TorporServer, key: str, **kw: Any) -> str:
    with pytest.raises(openai.RateLimitError) as err:
        llama.openai(key).chat.completions.create(model="smollm2", messages=MESSAGES, **kw)
    assert isinstance(err.value.body, dict) and err.value.body["type"] == "budget_exceeded"
    return str(err.value.body["message"])


def test_the_reserved_prompt_is_the_engines_count(llama: TorporServer, prompt_tokens: int) -> None:
    # A budget of exactly the prompt: no room for one completion token, refused naming the
    # engine's count (the upper estimate from the body would name another number).
    key, _ = new_key(llama, prompt_tokens)
    message = refusal(llama, key)
    assert f"the prompt ({prompt_tokens} tokens, counted by the engine)" in message, message
    assert f"in the {prompt_tokens} tokens left of {prompt_tokens}" in message

    # One more token: admitted with its limit lowered to 1, and it spends the cap exactly.
    key, key_id = new_key(llama, prompt_tokens + 1)
    resp = llama.openai(key).chat.completions.create(model="smollm2", messages=MESSAGES)
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (prompt_tokens, 1)
    assert spent(llama, key_id, 1)["tokens"] == prompt_tokens + 1
    cap = prompt_tokens + 1
    assert refusal(llama, key).endswith(f": {cap} of {cap} tokens")


def test_the_count_does_not_wait_for_the_generation_in_progress(
    llama: TorporServer, prompt_tokens: int
) -> None:
    key, _ = new_key(llama, prompt_tokens)
    long_run = threading.Event()

    def generate() -> None:
        stream = llama.openai().chat.completions.create(
            model="smollm2", messages=MESSAGES, max_tokens=200, stream=True
        )
        for _chunk in stream:
            long_run.set()

    worker = threading.Thread(target=generate)
    worker.start()
    try:
        assert long_run.wait(30)
        started = time.monotonic()
        message = refusal(llama, key)
        took = time.monotonic() - started
    finally:
        worker.join(60)
    # Counted by the busy worker, well inside the count's 1 s timeout.
    assert "counted by the engine" in message and took < 1.0, (message, took)


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
def test_concurrent_requests_spend_at_most_the_cap(
    llama: TorporServer, prompt_tokens: int, stream: bool
) -> None:
    # Room for three requests of 4 completion tokens at once, and 2 tokens more.
    cap = 3 * (prompt_tokens + 4) + 2
    key, key_id = new_key(llama, cap)
    client = llama.openai(key)

    def call(_: int) -> str:
        try:
            if stream:
                chunks = list(
                    client.chat.completions.create(
                        model="smollm2", messages=MESSAGES, max_tokens=4, stream=True
                    )
                )
                assert chunks
            else:
                assert client.chat.completions.create(
                    model="smollm2", messages=MESSAGES, max_tokens=4
                ).choices
            return "ok"
        except openai.RateLimitError as exc:
            assert isinstance(exc.body, dict) and exc.body["type"] == "budget_exceeded"
            message = exc.body["message"]
            assert "counted by the engine" in message or f" of {cap} tokens" in message, message
            return "refused"

    with ThreadPoolExecutor(N) as pool:
        outcomes = list(pool.map(call, range(N)))
    ok = outcomes.count("ok")
    assert ok >= 3 and outcomes.count("refused") == N - ok
    s = spent(llama, key_id, ok)
    assert s["prompt"] == ok * prompt_tokens  # settled at the engine's count
    assert s["tokens"] <= cap, (ok, s)
    # Top up one at a time with no limit of its own: each is limited to what is left.
    while call(0) == "ok":
        ok += 1
    s = spent(llama, key_id, ok)
    assert s["prompt"] == ok * prompt_tokens and s["tokens"] <= cap, (ok, s)
