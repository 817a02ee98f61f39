"""Webhook delivery: POST the final view of an async request to its `webhook_url`, signed
with HMAC-SHA256 of the body under the submitting key's secret, retried with exponential
backoff. The delivery state lives in the database, so a restart resumes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
import orjson

from torpor import __version__
from torpor.asyncreq.policy import SIGNATURE_HEADER, WebhookState, backoff_s, sign
from torpor.asyncreq.store import AsyncStore
from torpor.asyncreq.tables import AsyncRequestRow
from torpor.asyncreq.views import request_view
from torpor.loops import tick_forever

log = logging.getLogger(__name__)

MAX_CONCURRENT_DELIVERIES = 32


@dataclass(frozen=True)
class WebhookPolicy:
    poll_interval_s: float
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float
    timeout_s: float


@dataclass(frozen=True)
class Delivery:
    url: str
    body: bytes
    headers: dict[str, str]


# Posts one delivery; returns None on success, else a short reason.
Poster = Callable[[Delivery], Awaitable[str | None]]


def aiohttp_poster(http: Callable[[], aiohttp.ClientSession], timeout_s: float) -> Poster:
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 5.0))

    async def post(d: Delivery) -> str | None:
        try:
            async with http().post(
                d.url, data=d.body, headers=d.headers, timeout=timeout, allow_redirects=False
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"[:500]

    return post


def build_delivery(row: AsyncRequestRow, secret: str) -> Delivery:
    assert row.webhook_url is not None
    body = orjson.dumps(request_view(row, webhook=False))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"torpor-webhook/{__version__}",
        SIGNATURE_HEADER: sign(secret, body),
        "X-Torpor-Request-Id": row.id,
        "X-Torpor-Delivery-Attempt": str(row.webhook_attempts + 1),
    }
    return Delivery(row.webhook_url, body, headers)


class WebhookSender:
    def __init__(
        self,
        store: AsyncStore,
        post: Poster,
        now: Callable[[], datetime],
        policy: WebhookPolicy,
    ):
        self._store = store
        self._post = post
        self._now = now
        self._policy = policy
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="torpor-webhooks")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        await tick_forever(self.tick, self._wake, self._policy.poll_interval_s, "webhook tick")

    async def tick(self) -> None:
        room = MAX_CONCURRENT_DELIVERIES - len(self._tasks)
        if room <= 0:
            return
        for row in await self._store.due_webhooks(self._now(), room, set(self._tasks)):
            task = asyncio.create_task(self._deliver(row), name=f"torpor-webhook-{row.id}")
            self._tasks[row.id] = task
            task.add_done_callback(self._forget(row.id))

    def _forget(self, request_id: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._tasks.pop(request_id, None)

        return done

    async def _deliver(self, row: AsyncRequestRow) -> None:
        try:
            secret = await self._store.webhook_secret(row.key_id, self._now())
            error = await self._post(build_delivery(row, secret))
            attempts = row.webhook_attempts + 1
            if error is None:
                await self._store.webhook_done(row.id, WebhookState.DELIVERED, attempts, None, None)
                return
            if attempts >= self._policy.max_attempts:
                log.warning("webhook of %s failed for good: %s", row.id, error)
                await self._store.webhook_done(row.id, WebhookState.FAILED, attempts, None, error)
                return
            delay = backoff_s(attempts, self._policy.backoff_base_s, self._policy.backoff_max_s)
            next_at = self._now() + timedelta(seconds=delay)
            await self._store.webhook_done(row.id, WebhookState.PENDING, attempts, next_at, error)
        except Exception:
            log.exception("webhook delivery of %s failed", row.id)
        finally:
            self._wake.set()
