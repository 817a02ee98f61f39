"""Webhook delivery: POST the final view of an async request to its `webhook_url`, signed
with HMAC-SHA256 of the body under the submitting key's secret, retried with exponential
backoff. The delivery state lives in the database, so a restart resumes it.

A URL is checked when submitted (WebhookUrlGuard: its form, and every address its host
resolves to) and again when delivered: the sender's own session resolves through
GuardedResolver, so it connects only to addresses that passed `torpor.netguard`, whatever
DNS answers by then. A failure is recorded as a status class, never as what answered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from torpor import __version__
from torpor.asyncreq.policy import SIGNATURE_HEADER, WebhookState, backoff_s, sign
from torpor.asyncreq.store import AsyncStore
from torpor.asyncreq.tables import AsyncRequestRow
from torpor.asyncreq.views import request_view
from torpor.errors import AddressNotAllowed
from torpor.loops import tick_forever
from torpor.netguard import (
    IPAddress,
    Refused,
    address_refusal,
    addresses_refusal,
    as_address,
    url_target,
)

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


class Poster(Protocol):
    """Posts one delivery: None on success, else a status class (see `failure_class`)."""

    async def __call__(self, d: Delivery) -> str | None: ...

    async def close(self) -> None: ...


# Status classes recorded as a delivery's `last_error`: never exception text, host or port,
# so that the caller who chose the URL learns nothing about what answered there.
ADDRESS_NOT_ALLOWED = AddressNotAllowed.status_class
CONNECTION_FAILED = "connection failed"
TIMED_OUT = "timed out"
INVALID_URL = "invalid url"


def status_class(status: int) -> str | None:
    """None for 2xx, else "HTTP 3xx" (redirects are not followed), "HTTP 4xx", "HTTP 5xx"."""
    if 200 <= status < 300:
        return None
    return f"HTTP {min(max(status // 100, 1), 5)}xx"


def failure_class(exc: BaseException) -> str:
    """The status class of a failed delivery's exception."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, AddressNotAllowed):
            return ADDRESS_NOT_ALLOWED
        if isinstance(cur, aiohttp.InvalidURL):
            return INVALID_URL
        nested = getattr(cur, "os_error", None)
        cur = nested if isinstance(nested, BaseException) else (cur.__cause__ or cur.__context__)
    if isinstance(exc, TimeoutError):
        return TIMED_OUT
    return CONNECTION_FAILED


class GuardedResolver(AbstractResolver):
    """Resolves through another resolver and fails when any address it returns is one
    torpor may not connect to, so the connector only ever connects to checked addresses:
    a name that resolved to a public address at submit and to a private one now (DNS
    rebinding) is refused."""

    def __init__(self, inner: AbstractResolver):
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        reason = addresses_refusal(r["host"] for r in results)
        if reason is not None:
            raise AddressNotAllowed(reason)
        return results

    async def close(self) -> None:
        await self._inner.close()


def delivery_refusal(url: str, allow_private: bool) -> str | None:
    """Checks made before any connection: the URL's form, and an IP-literal host's address
    (IP literals never reach the resolver). A status class, or None."""
    target = url_target(url)
    if isinstance(target, Refused):
        return INVALID_URL
    if allow_private:
        return None
    try:
        host = URL(url).host
    except (ValueError, TypeError):
        return INVALID_URL
    for literal in (target.literal, as_address(host or "")):
        if literal is not None and address_refusal(literal) is not None:
            return ADDRESS_NOT_ALLOWED
    return None


class HttpPoster:
    """Posts deliveries through its own session, made on first use and closed by close().
    Unless private addresses are allowed its connector resolves through GuardedResolver;
    redirects are never followed."""

    def __init__(
        self,
        timeout_s: float,
        allow_private: bool,
        resolver: Callable[[], AbstractResolver] = DefaultResolver,
    ):
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 5.0))
        self._allow_private = allow_private
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._resolver_in_use: AbstractResolver | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            inner = self._resolver()
            resolver = inner if self._allow_private else GuardedResolver(inner)
            # The connector does not close a resolver it was given: close() does.
            self._resolver_in_use = resolver
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=MAX_CONCURRENT_DELIVERIES, resolver=resolver, use_dns_cache=False
                ),
                timeout=self._timeout,
                trust_env=False,  # never through an environment proxy: it would resolve
            )
        return self._session

    async def __call__(self, d: Delivery) -> str | None:
        refusal = delivery_refusal(d.url, self._allow_private)
        if refusal is not None:
            return refusal
        try:
            async with self._http().post(
                d.url, data=d.body, headers=d.headers, allow_redirects=False
            ) as resp:
                await resp.read()
                return status_class(resp.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return failure_class(exc)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver_in_use is not None:
            await self._resolver_in_use.close()
            self._resolver_in_use = None


# Resolves a host to its addresses (the event loop's getaddrinfo in production).
Resolve = Callable[[str, int], Awaitable[list[str]]]


async def getaddrinfo_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class WebhookUrlGuard:
    """The submit-time check of a webhook URL: its form, then (unless private addresses are
    allowed) every address its host resolves to. Delivery checks again (GuardedResolver)."""

    def __init__(self, resolve: Resolve, allow_private: bool, timeout_s: float):
        self._resolve = resolve
        self._allow_private = allow_private
        self._timeout_s = timeout_s

    async def refusal(self, url: str) -> str | None:
        """None when the URL may be used, else a message safe to show its submitter."""
        target = url_target(url)
        if isinstance(target, Refused):
            return target.reason
        if self._allow_private:
            return None
        if target.literal is not None:
            addresses: list[IPAddress | str] = [target.literal]
        else:
            try:
                async with asyncio.timeout(self._timeout_s):
                    addresses = list(await self._resolve(target.host, target.port))
            except (OSError, UnicodeError, ValueError, TimeoutError):
                return "host does not resolve"
            if not addresses:
                return "host does not resolve"
        reason = addresses_refusal(addresses)
        return None if reason is None else f"address not allowed ({reason})"


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
        await self._post.close()

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
