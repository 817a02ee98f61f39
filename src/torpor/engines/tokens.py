"""Counting a request's tokens with the engine's own tokenizer, for streams whose engine
sent no usage. Each engine that can count declares `token_calls`: the HTTP calls to its
worker (pure data) whose answers hold `count` (or a `tokens` list); the gateway makes them
once the stream is over (torpor.gateway.tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast


@dataclass(frozen=True)
class TokenCall:
    """One POST to the worker; its JSON answer holds `count` or `tokens`."""

    path: str
    body: dict[str, Any]


@dataclass(frozen=True)
class TokenCalls:
    prompt: TokenCall
    completion: TokenCall


class CountsTokens(Protocol):
    def token_calls(
        self, model: str, route: str, payload: dict[str, Any], completion: str
    ) -> TokenCalls | None:
        """The calls that count this request's prompt and `completion` text; None when the
        engine cannot count them (the usage record is then an estimate)."""
        ...


def counts_tokens(engine: object) -> CountsTokens | None:
    """The engine when it declares `token_calls`, else None: an attribute test, not a
    runtime-checkable protocol's isinstance (about 16 us a call, on the request path of
    every budgeted request and metered stream)."""
    return cast(CountsTokens, engine) if callable(getattr(engine, "token_calls", None)) else None


def token_counter(
    engine: object, model: str, route: str, payload: dict[str, Any]
) -> Callable[[str], TokenCalls | None] | None:
    """For a request: completion text -> the calls that count it, or None."""
    counter = counts_tokens(engine)
    if counter is None:
        return None
    if counter.token_calls(model, route, payload, "") is None:
        return None
    return lambda completion: counter.token_calls(model, route, payload, completion)


def prompt_of(route: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The part of a completion request that is its prompt, by route."""
    if route == "/v1/chat/completions" and isinstance(payload.get("messages"), list):
        prompt: dict[str, Any] = {"messages": payload["messages"]}
        for name in ("tools", "tool_choice"):
            if payload.get(name) is not None:
                prompt[name] = payload[name]
        return prompt
    if route == "/v1/completions" and isinstance(payload.get("prompt"), str):
        return {"prompt": payload["prompt"]}
    return None


def prompt_call(
    engine: object, model: str, route: str, payload: dict[str, Any]
) -> TokenCall | None:
    """The call that counts a request's prompt with the engine's tokenizer, or None."""
    counter = counts_tokens(engine)
    if counter is None:
        return None
    calls = counter.token_calls(model, route, payload, "")
    return calls.prompt if calls is not None else None
