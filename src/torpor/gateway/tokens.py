"""Making an engine's token count calls (torpor.engines.tokens) on a worker: the prompt of a
request under a budget before it is reserved, and a stream's tokens once it is over."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from torpor.engines.tokens import TokenCall, TokenCalls

log = logging.getLogger(__name__)

# An engine that runs one request at a time counts after the one it is running.
COUNT_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=2)
# Counting a prompt before its reservation holds the request: past this, the reservation
# uses the upper estimate from the body instead (torpor.metering.reserve).
PROMPT_COUNT_TIMEOUT = aiohttp.ClientTimeout(total=1.0, sock_connect=0.25)


async def count_tokens(
    http: aiohttp.ClientSession, base_url: str, calls: TokenCalls
) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens), or None when the worker could not count."""
    try:
        prompt, completion = await asyncio.gather(
            _count(http, base_url, calls.prompt), _count(http, base_url, calls.completion)
        )
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("token count on %s failed: %s", base_url, exc or type(exc).__name__)
        return None
    return prompt, completion


async def count_prompt(http: aiohttp.ClientSession, base_url: str, call: TokenCall) -> int | None:
    """The prompt's tokens as the engine counts them, or None (no answer in
    PROMPT_COUNT_TIMEOUT, or an error: the caller falls back to the estimate)."""
    try:
        return await _count(http, base_url, call, PROMPT_COUNT_TIMEOUT)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("prompt count on %s failed: %s", base_url, exc or type(exc).__name__)
        return None


async def _count(
    http: aiohttp.ClientSession,
    base_url: str,
    call: TokenCall,
    limits: aiohttp.ClientTimeout = COUNT_TIMEOUT,
) -> int:
    async with http.post(base_url + call.path, json=call.body, timeout=limits) as resp:
        if resp.status != 200:
            raise ValueError(f"{call.path} answered {resp.status}")
        answer: Any = await resp.json(content_type=None)
    if isinstance(answer, dict):
        if isinstance(answer.get("count"), int):
            return int(answer["count"])
        if isinstance(answer.get("tokens"), list):
            return len(answer["tokens"])
    raise ValueError(f"{call.path} gave no count")
