"""Reservations: what one request may spend, decided before it is forwarded.

Pure functions of (the request, prices, the deployment's context limit, what is left of
each budget): no clock, no I/O. The meter calls them with its month-to-date totals.

The prompt is reserved at its exact size when the engine has a tokenizer torpor can ask
(the gateway counts it on a worker first, torpor.gateway.tokens; `Ask.counted`), else at an
upper estimate read from the body: the UTF-8 bytes of its text (every byte-level BPE or byte-fallback SentencePiece tokenizer makes at most one
token per byte), plus `PER_MESSAGE_TOKENS` for each chat message and `BASE_TOKENS` for the
chat template. Non-text parts (images, audio) count the bytes of their JSON, which bounds
inline data but not a remote image URL. The completion is reserved at the request's own
limit (`max_completion_tokens` or `max_tokens`) bounded by the deployment's context limit;
when a budget is tighter than that, torpor writes the smaller limit into the request, so
a request can never spend more than what was left when it was admitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from torpor.metering.budget import Caps, Spent
from torpor.metering.pricing import Prices

# Chat template tokens around each message (role markers, separators) and around the whole
# conversation (the assistant's turn opener): generous for ChatML, Llama 3 and Mistral.
PER_MESSAGE_TOKENS = 8
BASE_TOKENS = 8
# Routes whose answer is generated tokens (a completion limit applies).
GENERATING = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Left:
    """What is left of one budget (None: that unit is not capped), and whose it is."""

    who: str
    tokens: int | None = None
    usd: Decimal | None = None
    cap_tokens: int | None = None
    cap_usd: Decimal | None = None


@dataclass(frozen=True)
class Ask:
    route: str
    prompt_tokens: int
    # The request's own completion limit, and the field that carries it.
    max_tokens: int | None
    limit_field: str | None
    # True when `prompt_tokens` is the engine's own count, not the upper estimate.
    counted: bool = False


@dataclass(frozen=True)
class Grant:
    prompt_tokens: int
    completion_tokens: int
    usd: Decimal
    # The completion limit torpor writes into the request (None: leave the body alone).
    set_limit: int | None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _text_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(_text_bytes(v) for v in value)
    if isinstance(value, dict):
        text = value.get("text")
        if isinstance(text, str) and len(value) <= 2:  # {"type": "text", "text": ...}
            return len(text.encode())
        return len(orjson.dumps(value))
    if isinstance(value, int | float):
        return 1  # a token id
    return 0


def prompt_upper_bound(route: str, payload: dict[str, Any]) -> int:
    """An upper estimate of the prompt's tokens, from the request body (see the module)."""
    if route == "/v1/chat/completions":
        messages = payload.get("messages")
        total = BASE_TOKENS
        if isinstance(messages, list):
            for m in messages:
                total += PER_MESSAGE_TOKENS
                if isinstance(m, dict):
                    total += _text_bytes(m.get("content"))
                    extra = {k: v for k, v in m.items() if k not in ("role", "content")}
                    total += len(orjson.dumps(extra)) if extra else 0
        for name in ("tools", "functions", "response_format"):
            if payload.get(name) is not None:
                total += len(orjson.dumps(payload[name]))
        return total
    if route == "/v1/completions":
        return BASE_TOKENS + _text_bytes(payload.get("prompt"))
    if route == "/v1/embeddings":
        return _text_bytes(payload.get("input"))
    if route == "/v1/responses":
        total = BASE_TOKENS + _text_bytes(payload.get("instructions"))
        inp = payload.get("input")
        total += len(inp.encode()) if isinstance(inp, str) else len(orjson.dumps(inp))
        if payload.get("tools") is not None:
            total += len(orjson.dumps(payload["tools"]))
        return total
    return 0


def left_of(who: str, spent: Spent, caps: Caps) -> Left:
    """What is left of `caps` after `spent` (spent and reserved), exactly."""
    cap_usd = Decimal(repr(caps.usd)) if caps.usd is not None else None
    return Left(
        who,
        tokens=caps.tokens - spent.tokens if caps.tokens is not None else None,
        usd=cap_usd - Decimal(repr(spent.usd)) if cap_usd is not None else None,
        cap_tokens=caps.tokens,
        cap_usd=cap_usd,
    )


def ask_of(route: str, payload: dict[str, Any], counted: int | None = None) -> Ask:
    """What a request asks for: its prompt (`counted` by the engine when given, else the
    upper estimate) and its own completion limit."""
    limit: int | None = None
    field: str | None = None
    for name in _LIMIT_FIELDS:
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            limit, field = value, name
            break
    if counted is not None:
        return Ask(route, counted, limit, field, counted=True)
    return Ask(route, prompt_upper_bound(route, payload), limit, field)


def plan(ask: Ask, prices: Prices, context_limit: int, lefts: list[Left]) -> Grant | str:
    """The reservation for a request, or the refusal message naming the numbers.

    Refused when a budget is spent, or when the prompt (at its estimate) and one completion
    token do not fit in what is left. Otherwise the completion limit is the smallest of the
    request's own, the context limit and what each budget has left after the prompt."""
    generating = ask.route in GENERATING
    own = ask.max_tokens
    completion = min(own, context_limit) if own is not None else context_limit
    if not generating:
        completion = 0
    prompt = ask.prompt_tokens
    need = 1 if generating else 0
    size = f"{prompt} tokens, counted by the engine" if ask.counted else f"up to {prompt} tokens"
    budget_limit: int | None = None
    p_rate = prices.prompt_token_usd
    c_rate = prices.completion_token_usd
    for left in lefts:
        if left.tokens is not None:
            if left.tokens <= 0:
                return f"Budget exceeded for {left.who}: {left.cap_tokens} tokens spent or reserved"
            room = left.tokens - prompt
            if room < need:
                return (
                    f"Budget exceeded for {left.who}: the prompt ({size}) and "
                    f"{need} completion token(s) do not fit in the {left.tokens} tokens left "
                    f"of {left.cap_tokens}"
                )
            budget_limit = room if budget_limit is None else min(budget_limit, room)
        if left.usd is not None:
            if left.usd <= 0:
                return f"Budget exceeded for {left.who}: ${left.cap_usd} spent or reserved"
            room_usd = left.usd - prompt * p_rate
            if room_usd < need * c_rate:
                return (
                    f"Budget exceeded for {left.who}: the prompt ({size}, "
                    f"${prompt * p_rate:.6f}) and {need} completion token(s) do not fit in the "
                    f"${left.usd:.6f} left of ${left.cap_usd}"
                )
            if c_rate > 0:
                room = int(room_usd / c_rate)
                budget_limit = room if budget_limit is None else min(budget_limit, room)
    set_limit: int | None = None
    if generating and budget_limit is not None and budget_limit < completion:
        # A budget is tighter than the request's own limit and the context: write it in.
        completion = set_limit = budget_limit
    return Grant(prompt, completion, prices.request_usd(prompt, completion), set_limit)


def with_limit(payload: dict[str, Any], ask: Ask, limit: int) -> bytes:
    """The request body (the parsed `payload`, left as it is) with its completion limit set
    to `limit` (in the field it used, else `max_tokens`, or `max_output_tokens` for the
    Responses API)."""
    field = ask.limit_field
    if field is None:
        field = "max_output_tokens" if ask.route == "/v1/responses" else "max_tokens"
    return orjson.dumps({**payload, field: limit})


_CONTEXT_FLAGS = ("--n_ctx", "--n-ctx", "--ctx-size", "-c", "--context-length", "--max-model-len")


def context_limit(
    declared: int | None, options: dict[str, Any], framework_args: list[str], default: int
) -> int:
    """A deployment's context window: declared in the spec, else named by the engine's
    options or arguments, else the default."""
    if declared is not None:
        return declared
    value = options.get("max_model_len")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    for i, arg in enumerate(framework_args):
        name, eq, inline = arg.partition("=")
        if name in _CONTEXT_FLAGS:
            raw = inline if eq else (framework_args[i + 1] if i + 1 < len(framework_args) else "")
            if raw.isdigit() and int(raw) > 0:
                return int(raw)
    return default
