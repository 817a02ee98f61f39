"""Budgets that hold under concurrency: 50 requests at once through a real `torpor serve`
against the fake engine (1 prompt + 20 completion tokens each), for key and deployment
caps, in tokens and dollars, synchronous, streamed and async.

The bound: the fake engine has no tokenizer, so torpor reserves the prompt at its upper
estimate (UTF-8 bytes plus the chat template, torpor.metering.reserve), never below the
real count; with the completion limit lowered to what is left, the spend never exceeds
the cap at all (the estimate's error only refuses early, it never overspends)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TorporServer, fake_spec

PROMPT = [{"role": "user", "content": "hello"}]  # 1 token for the fake engine
N = 50
USD_PRICES = {"prompt_per_mtok": 1_000_000.0, "completion_per_mtok": 1_000_000.0}  # $1/token


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorporServer]:
    env = {"TORPOR_CREATE_DEFAULT_DEPLOYMENT": "false", "TORPOR_ASYNC_POLL_INTERVAL_S": "0.2"}
    server = TorporServer(tmp_path_factory.mktemp("budgets"), env).start()
    try:
        yield server
    finally:
        server.stop()
        assert server.survivors() == []


_made: set[str] = set()


def deployment(srv: TorporServer, name: str, **fields: Any) -> str:
    if name not in _made:
        srv.deploy(fake_spec(name, engine_args="--tokens 20 --token-delay-ms 5", min_workers=1,
                             concurrency=64, max_queue=64, **fields))  # fmt: skip
        srv.wait_for(name, lambda d: d["status"] == "ready")
        _made.add(name)
    return name


def new_key(srv: TorporServer, **fields: Any) -> tuple[str, str]:
    with srv.api() as c:
        r = c.post("/api/keys", json={"name": f"k{time.monotonic_ns()}", **fields})
        assert r.status_code == 201, r.text
        return r.json()["key"], r.json()["id"]


def spent(srv: TorporServer, key_id: str | None = None, dep: str | None = None) -> dict[str, Any]:
    """Month-to-date tokens and token cost (invoice lines), for a key or a deployment."""
    with srv.api() as c:
        lines = c.get("/api/invoices").json()["data"]
    lines = [ln for ln in lines if ln["key_id"] is not None]
    lines = [ln for ln in lines if (key_id is None or ln["key_id"] == key_id)
             and (dep is None or ln["deployment"] == dep)]  # fmt: skip
    return {
        "tokens": sum(ln["prompt_tokens"] + ln["completion_tokens"] for ln in lines),
        "usd": sum(ln["token_cost"] for ln in lines),
        "requests": sum(ln["requests"] for ln in lines),
    }


def rush(call: Callable[[int], str]) -> dict[str, int]:
    with ThreadPoolExecutor(N) as pool:
        outcomes = list(pool.map(call, range(N)))
    return {o: outcomes.count(o) for o in set(outcomes)}


def chat(srv: TorporServer, key: str, model: str, stream: bool = False, **kw: Any) -> Callable[[int], str]:  # fmt: skip
    client = srv.openai(key)

    def call(_: int) -> str:
        try:
            if stream:
                chunks = list(client.chat.completions.create(
                    model=model, messages=kw.get("messages", PROMPT), stream=True,  # type: ignore[arg-type]
                    **{k: v for k, v in kw.items() if k != "messages"},
                ))  # fmt: skip
                assert chunks
            else:
                r = client.chat.completions.create(
                    model=model, messages=kw.get("messages", PROMPT),  # type: ignore[arg-type]
                    **{k: v for k, v in kw.items() if k != "messages"},
                )  # fmt: skip
                assert r.choices
            return "ok"
        except openai.RateLimitError as exc:
            assert isinstance(exc.body, dict) and exc.body["type"] == "budget_exceeded", exc.body
            return "refused"

    return call


def settled(srv: TorporServer, key_id: str, ok: int) -> dict[str, Any]:
    """The key's spend once every admitted request is recorded (reads merge unflushed)."""
    deadline = time.monotonic() + 10
    s = spent(srv, key_id)
    while s["requests"] < ok and time.monotonic() < deadline:
        time.sleep(0.05)
        s = spent(srv, key_id)
    assert s["requests"] == ok
    return s


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
def test_key_token_cap_without_max_tokens(srv: TorporServer, stream: bool) -> None:
    dep = deployment(srv, "caps")
    key, key_id = new_key(srv, budget_tokens_monthly=100)
    out = rush(chat(srv, key, dep, stream))
    s = settled(srv, key_id, out.get("ok", 0))
    assert out.get("ok", 0) >= 1 and s["tokens"] > 0
    assert s["tokens"] <= 100, (out, s)
    # Sequential top-ups until the budget is spent: still never above the cap.
    call = chat(srv, key, dep, stream)
    while call(0) == "ok":
        pass
    s = spent(srv, key_id)
    assert 0 < s["tokens"] <= 100


def test_key_token_cap_with_a_prompt_beyond_the_budget(srv: TorporServer) -> None:
    dep = deployment(srv, "caps")
    key, key_id = new_key(srv, budget_tokens_monthly=100)
    words = [{"role": "user", "content": " ".join(["word"] * 2000)}]
    client = srv.openai(key)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model=dep, messages=words, max_tokens=1)  # type: ignore[arg-type]
    message = str(err.value)
    assert "do not fit in the 100 tokens left of 100" in message and "the prompt (up to" in message
    out = rush(chat(srv, key, dep, messages=words, max_tokens=1))
    assert out == {"refused": N}
    assert spent(srv, key_id)["tokens"] == 0


def test_key_token_cap_with_max_tokens(srv: TorporServer) -> None:
    dep = deployment(srv, "caps")
    key, key_id = new_key(srv, budget_tokens_monthly=100)
    out = rush(chat(srv, key, dep, max_tokens=20))
    s = settled(srv, key_id, out.get("ok", 0))
    assert out.get("ok", 0) >= 1 and s["tokens"] <= 100, (out, s)


def test_key_usd_cap_without_max_tokens(srv: TorporServer) -> None:
    dep = deployment(srv, "priced", prices=USD_PRICES)
    # $10 at $1/token: less than the prompt's upper estimate (21 tokens for "hello" with
    # the template allowance), so every request is refused at once, naming the numbers.
    key, key_id = new_key(srv, budget_usd_monthly=10.0)
    assert rush(chat(srv, key, dep)) == {"refused": N}
    with pytest.raises(openai.RateLimitError) as err:
        srv.openai(key).chat.completions.create(model=dep, messages=PROMPT)  # type: ignore[arg-type]
    assert "do not fit in the $10.000000 left of $10" in str(err.value)
    assert spent(srv, key_id)["usd"] == 0
    # $100: some are admitted, each limited to what is left; the cap holds.
    key, key_id = new_key(srv, budget_usd_monthly=100.0)
    out = rush(chat(srv, key, dep))
    s = settled(srv, key_id, out.get("ok", 0))
    assert out.get("ok", 0) >= 1 and 0 < s["usd"] <= 100.0, (out, s)


def test_async_requests_reserve_when_they_run(srv: TorporServer) -> None:
    dep = deployment(srv, "caps")
    key, key_id = new_key(srv, budget_tokens_monthly=100)
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"},
                      timeout=30) as c:  # fmt: skip

        def submit(_: int) -> str:
            r = c.post("/v1/chat/completions", json={"model": dep, "messages": PROMPT},
                       headers={"X-Async": "true"})  # fmt: skip
            if r.status_code == 429:
                return "refused"
            assert r.status_code == 202, r.text
            return str(r.json()["id"])

        with ThreadPoolExecutor(N) as pool:
            ids = [i for i in pool.map(submit, range(N)) if i != "refused"]
        assert ids  # accepted at submit: nothing was spent yet
        views = []
        for rid in ids:
            deadline = time.monotonic() + 60
            while True:
                view = c.get(f"/v1/requests/{rid}").json()
                if view["status"] in ("completed", "failed"):
                    break
                assert time.monotonic() < deadline, view
                time.sleep(0.1)
            views.append(view)
    done = [v for v in views if v["status"] == "completed"]
    refused = [v for v in views if v["status"] == "failed"]
    assert all(v["status_code"] == 429 for v in refused)
    assert done and refused  # the budget admitted some when they ran, refused the rest
    s = settled(srv, key_id, len(done))
    assert 0 < s["tokens"] <= 100, s


@pytest.mark.parametrize("unit", ["tokens", "usd"])
def test_deployment_caps_hold_across_keys(srv: TorporServer, unit: str) -> None:
    if unit == "tokens":
        dep = deployment(srv, "dep-tokens", budget_tokens_monthly=100)
    else:
        dep = deployment(srv, "dep-usd", budget_usd_monthly=100.0, prices=USD_PRICES)
    keys = [new_key(srv) for _ in range(2)]
    calls = [chat(srv, keys[i % 2][0], dep) for i in range(2)]
    out = rush(lambda i: calls[i % 2](i))
    total = {"tokens": 0, "usd": 0.0, "requests": 0}
    deadline = time.monotonic() + 10
    while total["requests"] < out.get("ok", 0) and time.monotonic() < deadline:
        time.sleep(0.05)
        total = spent(srv, dep=dep)
    assert total["requests"] == out.get("ok", 0) >= 1
    if unit == "tokens":
        assert 0 < total["tokens"] <= 100, (out, total)
    else:
        assert 0 < total["usd"] <= 100.0, (out, total)


def test_a_huge_max_tokens_does_not_lock_others_out(srv: TorporServer) -> None:
    srv.deploy(fake_spec("huge", engine_args="--tokens 20 --token-delay-ms 100", min_workers=1,
                         concurrency=8, budget_tokens_monthly=10_000_000))  # fmt: skip
    srv.wait_for("huge", lambda d: d["status"] == "ready")
    key, _ = new_key(srv)
    other, _ = new_key(srv)
    stream = srv.openai(key).chat.completions.create(
        model="huge",
        messages=PROMPT,
        max_tokens=10**15,
        stream=True,  # type: ignore[arg-type]
    )
    first = next(iter(stream))  # the huge request is running now
    assert first is not None
    for k in (other, srv.admin_key):
        r = srv.openai(k).chat.completions.create(model="huge", messages=PROMPT, max_tokens=2)  # type: ignore[arg-type]
        assert r.choices[0].message.content
    assert len(list(stream)) >= 19
