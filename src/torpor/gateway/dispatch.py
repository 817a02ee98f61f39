"""Forwarding one request to a deployment's workers: take a slot from admission (holding
the request through a cold start), call the worker, retry on another worker when the one
picked died before answering, and write the answer to a sink.

The sink is the client connection for synchronous requests (gateway.proxy.Responder) or a
buffer for requests run in the background; both go through the same admission and retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson

from torpor.admission import DeploymentGate, Lease
from torpor.auth import ApiKey
from torpor.errors import (
    DeploymentUnavailable,
    RequestTimeout,
    TorporError,
    UpstreamError,
    error_body,
)

log = logging.getLogger(__name__)

# A request whose worker died before answering is tried on another worker this many times.
MAX_RETRIES = 2


class Sink(Protocol):
    """Where an answer goes. `started`: the status line is out, errors must go in-band."""

    started: bool
    sse: bool

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    async def body(self, data: bytes, more: bool = True) -> None: ...

    async def full(self, status: int, headers: list[tuple[bytes, bytes]], data: bytes) -> None: ...

    async def start_sse(self, extra: list[tuple[bytes, bytes]] | None = None) -> None: ...

    async def error(self, exc: TorporError) -> None: ...


@dataclass
class UpstreamRequest:
    """A request already authenticated and resolved to a deployment."""

    key: ApiKey
    deployment: str
    method: str
    # Engine path with query string, starting with /v1.
    path: str
    body: bytes
    headers: dict[str, str]
    stream: bool
    session_id: str | None


class _WorkerUnreachable(Exception):
    """The worker failed before any byte reached the client: safe to try another."""


@dataclass(frozen=True)
class Dispatcher:
    gate_for: Callable[[str], DeploymentGate | None]
    http: Callable[[], aiohttp.ClientSession]
    on_worker_broken: Callable[[str], None]
    keepalive_interval_s: float
    request_timeout_s: float
    connect_timeout_s: float

    def gate(self, deployment: str) -> DeploymentGate:
        gate = self.gate_for(deployment)
        if gate is None:
            raise DeploymentUnavailable(
                f"Deployment not found or not running: no deployment named {deployment!r}"
            )
        return gate

    async def dispatch(self, req: UpstreamRequest, out: Sink) -> None:
        gate = self.gate(req.deployment)
        call = _Upstream(self, req)
        deadline = time.monotonic() + gate.wait_time_s
        for attempt in range(MAX_RETRIES + 1):
            lease = await _acquire(self, gate, req.session_id, req.stream, deadline, out)
            if lease is None:
                return  # the error already went out as an SSE event
            try:
                await call.run(lease, out)
                return
            except _WorkerUnreachable:
                log.warning("worker %s unreachable (attempt %d)", lease.worker_id, attempt + 1)
                gate.report_broken(lease.worker_id)
                self.on_worker_broken(req.deployment)
            finally:
                lease.release()
        raise UpstreamError()


class BufferedResponse:
    """A sink that keeps the whole answer, for requests run in the background."""

    def __init__(self) -> None:
        self.started = False
        self.sse = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started, self.status, self.headers = True, status, headers

    async def body(self, data: bytes, more: bool = True) -> None:
        self.chunks.append(data)

    async def full(self, status: int, headers: list[tuple[bytes, bytes]], data: bytes) -> None:
        await self.start(status, headers)
        self.chunks.append(data)

    async def start_sse(self, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        self.sse = True
        await self.start(200, [(b"content-type", b"text/event-stream"), *(extra or [])])

    async def error(self, exc: TorporError) -> None:
        if not self.started:
            await self.full(
                exc.status, [(b"content-type", b"application/json")], orjson.dumps(error_body(exc))
            )
        else:
            self.chunks.append(orjson.dumps(error_body(exc)))

    @property
    def content(self) -> bytes:
        return b"".join(self.chunks)


_RELAY = frozenset({"content-type", "content-encoding", "x-request-id"})


class _Upstream:
    """One request to a worker, retried on another worker by the caller when it could not
    reach this one."""

    def __init__(self, deps: Dispatcher, req: UpstreamRequest):
        self.deps, self.req = deps, req
        if req.stream:
            # Between chunks, not in total: a long generation may stream for minutes.
            self.timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=deps.connect_timeout_s, sock_read=deps.request_timeout_s
            )
        else:
            self.timeout = aiohttp.ClientTimeout(
                total=deps.request_timeout_s, sock_connect=deps.connect_timeout_s
            )

    async def run(self, lease: Lease, out: Sink) -> None:
        req = self.req
        url = lease.route.url + req.path
        worker = (b"x-torpor-worker", lease.worker_id.encode())
        try:
            resp = await self.deps.http().request(
                req.method,
                url,
                data=req.body or None,
                headers=req.headers,
                timeout=self.timeout,
            )
        except (aiohttp.ClientConnectionError, aiohttp.ClientOSError) as exc:
            raise _WorkerUnreachable(str(exc)) from exc
        except TimeoutError as exc:
            raise _WorkerUnreachable("connect timeout") from exc
        complete = False
        try:
            if req.stream and resp.status == 200:
                if not out.started:
                    await out.start_sse([worker])
                try:
                    async for chunk in resp.content.iter_any():
                        await out.body(chunk)
                except TimeoutError:
                    await out.error(RequestTimeout())
                    return
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                    await out.error(UpstreamError())
                    return
                await out.body(b"", more=False)
            else:
                try:
                    data = await resp.read()
                except TimeoutError:
                    raise RequestTimeout() from None
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                    if out.started:
                        raise UpstreamError() from exc
                    raise _WorkerUnreachable(str(exc)) from exc
                await self._relay(resp, data, worker, out)
            complete = True
        finally:
            if complete:
                resp.release()
            else:
                # Dropping the connection is how the engine learns the client is gone.
                resp.close()

    async def _relay(
        self,
        resp: aiohttp.ClientResponse,
        data: bytes,
        worker: tuple[bytes, bytes],
        out: Sink,
    ) -> None:
        if resp.status >= 500:
            log.warning("worker answered %d: %s", resp.status, data[:500])
            raise UpstreamError()
        if out.started:
            # Held through a cold start as SSE: an engine error becomes an error event.
            if resp.status >= 400:
                await out.body(b"data: " + data + b"\n\n", more=False)
            else:
                await out.body(data, more=False)
            return
        headers = [
            (k.lower().encode(), v.encode()) for k, v in resp.headers.items() if k.lower() in _RELAY
        ]
        await out.full(resp.status, [*headers, worker], data)


async def _acquire(
    deps: Dispatcher,
    gate: DeploymentGate,
    session_id: str | None,
    stream: bool,
    deadline: float,
    out: Sink,
) -> Lease | None:
    """A slot on a worker, waiting through a cold start when needed."""
    lease = gate.try_acquire(session_id)
    if lease is not None:
        return lease
    waiter = gate.enqueue(session_id)
    try:
        if not stream:
            lease = await gate.wait(waiter, deadline - time.monotonic())
            if lease is None:
                raise gate.timeout_error()
            return lease
        # A held stream answers at once with SSE comments, so clients and proxies see a
        # live connection while the worker boots.
        if not out.started:
            await out.start_sse()
        await out.body(b": waiting for a worker\n\n")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise gate.timeout_error()
            lease = await gate.wait(waiter, min(remaining, deps.keepalive_interval_s))
            if lease is not None:
                return lease
            await out.body(b": keep-alive\n\n")
    except TorporError as exc:
        gate.abandon(waiter)
        if out.started:
            await out.error(exc)
            return None
        raise
    except BaseException:
        gate.abandon(waiter)
        raise
