"""Pure budget decisions: reservations (torpor.metering.reserve) and the split of a
worker's GPU time between keys and the deployment (torpor.metering.gpu)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from torpor.metering.gpu import BusyClock, split_interval
from torpor.metering.pricing import Prices
from torpor.metering.reserve import (
    BASE_TOKENS,
    PER_MESSAGE_TOKENS,
    Ask,
    Grant,
    Left,
    ask_of,
    context_limit,
    plan,
    prompt_upper_bound,
    with_limit,
)

CHAT = "/v1/chat/completions"
PRICES = Prices(prompt_per_mtok=1_000_000.0, completion_per_mtok=2_000_000.0, gpu_hourly=0.0,
                storage_gb_month=0.0)  # fmt: skip
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_prompt_estimate_bounds_text_bytes_and_template() -> None:
    payload = {"messages": [{"role": "user", "content": "héllo there"}]}
    assert prompt_upper_bound(CHAT, payload) == BASE_TOKENS + PER_MESSAGE_TOKENS + 12
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "ab"}]}]}
    assert prompt_upper_bound(CHAT, parts) == BASE_TOKENS + PER_MESSAGE_TOKENS + 2
    assert prompt_upper_bound("/v1/completions", {"prompt": "abc"}) == BASE_TOKENS + 3
    assert prompt_upper_bound("/v1/embeddings", {"input": ["ab", "c"]}) == 3
    words = " ".join(["word"] * 2000)
    # At least one token per whitespace-separated word: above any tokenizer's count.
    assert prompt_upper_bound(CHAT, {"messages": [{"role": "user", "content": words}]}) > 2000


def test_plan_caps_completion_at_what_is_left_and_writes_it_in() -> None:
    ask = ask_of(CHAT, {"messages": [{"role": "user", "content": "hi"}]})
    grant = plan(ask, PRICES, 4096, [Left("key 'k'", tokens=100, cap_tokens=100)])
    assert isinstance(grant, Grant)
    assert grant.prompt_tokens == ask.prompt_tokens
    assert grant.tokens == 100 and grant.set_limit == 100 - ask.prompt_tokens
    # The request's own smaller limit stands, and the body is left alone.
    own = Ask(CHAT, 10, 5, "max_tokens")
    grant = plan(own, PRICES, 4096, [Left("key 'k'", tokens=100, cap_tokens=100)])
    assert isinstance(grant, Grant) and (grant.tokens, grant.set_limit) == (15, None)
    # Without a budget the context limit bounds the reservation; nothing is rewritten.
    huge = Ask(CHAT, 10, 10**15, "max_tokens")
    grant = plan(huge, PRICES, 4096, [Left("deployment 'd'", tokens=10_000_000)])
    assert isinstance(grant, Grant) and (grant.tokens, grant.set_limit) == (4106, None)


def test_plan_refuses_a_prompt_that_does_not_fit_naming_the_numbers() -> None:
    refusal = plan(Ask(CHAT, 150, 1, "max_tokens"), PRICES, 4096,
                   [Left("key 'k'", tokens=100, cap_tokens=100)])  # fmt: skip
    assert refusal == (
        "Budget exceeded for key 'k': the prompt (up to 150 tokens) and 1 completion "
        "token(s) do not fit in the 100 tokens left of 100"
    )


def test_plan_in_dollars_uses_exact_decimals() -> None:
    # $10 left, $1 per prompt token, $2 per completion token: 3 prompt tokens leave $7,
    # which is 3 completion tokens (not 3.5).
    left = Left("key 'k'", usd=Decimal("10"), cap_usd=Decimal("10"))
    grant = plan(Ask(CHAT, 3, None, None), PRICES, 4096, [left])
    assert isinstance(grant, Grant)
    assert (grant.completion_tokens, grant.set_limit, grant.usd) == (3, 3, Decimal("9"))
    refusal = plan(Ask(CHAT, 9, None, None), PRICES, 4096, [left])
    assert isinstance(refusal, str) and "do not fit in the $10.000000 left of $10" in refusal


def test_with_limit_keeps_the_field_the_request_used() -> None:
    body = orjson.dumps({"model": "m", "max_completion_tokens": 500})
    ask = ask_of(CHAT, orjson.loads(body))
    assert orjson.loads(with_limit(orjson.loads(body), ask, 7))["max_completion_tokens"] == 7
    ask = ask_of("/v1/responses", {"input": "hi"})
    assert orjson.loads(with_limit({"input": "hi"}, ask, 7))["max_output_tokens"] == 7


def test_context_limit_from_spec_options_or_args() -> None:
    assert context_limit(100, {"max_model_len": 5}, [], 9) == 100
    assert context_limit(None, {"max_model_len": 5}, [], 9) == 5
    assert context_limit(None, {}, ["--n_ctx", "512"], 9) == 512
    assert context_limit(None, {}, ["--context-length=2048"], 9) == 2048
    assert context_limit(None, {}, ["--verbose"], 9) == 9


def test_busy_time_is_shared_by_requests_in_flight() -> None:
    clock = BusyClock()
    clock.begin("a", at(0))
    clock.begin("a", at(0))
    clock.begin("b", at(0))
    clock.end("b", at(3))  # 0-3 s: a has 2 of 3 requests
    clock.end("a", at(4))  # 3-4 s: a alone
    owed = clock.take(at(10))  # 4-10 s: one a request still running
    assert owed == pytest.approx({"a": 2.0 + 1.0 + 6.0, "b": 1.0})


def test_split_sums_to_the_interval() -> None:
    part = split_interval(at(0), at(20), started_at=at(0), ready_at=at(5),
                          busy={"a": 6.0, "b": 2.0})  # fmt: skip
    assert (part.total_s, part.startup_s, part.idle_s) == (20.0, 5.0, 7.0)
    assert part.busy_s == {"a": 6.0, "b": 2.0}
    # More busy time than the interval holds is scaled down, never billed twice.
    over = split_interval(at(10), at(20), at(0), at(5), busy={"a": 15.0, "b": 5.0})
    assert over.startup_s == 0 and over.idle_s == 0
    assert sum(over.busy_s.values()) == pytest.approx(10.0)
    assert over.busy_s["a"] == pytest.approx(7.5)
