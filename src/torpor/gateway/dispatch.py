"""Forwarding one request to a deployment's workers: take a slot from admission (holding
the request through a cold start), call the worker, retry on another worker when the one
picked could not be reached or died before answering, and write the answer to a sink.

A worker that took the request and then said nothing for the request timeout is not
"unreachable": that request ends in one 504 (it is never sent again, to this worker or
another), and the worker stays routable for the controller to judge.

The sink is the client connection for synchronous requests (gateway.proxy.Responder) or a
buffer for requests run in the background; both go through the same admission and retries.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import orjson

from torpor.admission import DeploymentGate, Lease
from torpor.auth import ApiKey
from torpor.engines.tokens import TokenCall, TokenCalls
from torpor.errors import (
    DeploymentUnavailable,
    InferenceTimeout,
    TorporError,
    UpstreamError,
    WorkerUnreachable,
    error_body,
)
from torpor.gateway.engine_errors import engine_error
from torpor.gateway.tokens import count_prompt, count_tokens
from torpor.metering.meter import RequestUsage, Reservation
from torpor.metering.sse import StreamUsage

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
    # Monotonic arrival time, for latency and queue wait.
    arrived: float = field(default_factory=time.monotonic)
    # Streams: drop the usage chunk torpor asked for on the client's behalf, or add one
    # made from counted chunks when the client asked and the engine gave none.
    strip_usage_chunk: bool = False
    want_usage_chunk: bool = False
    # The request's own cap on generated tokens, reserved against budgets while it runs.
    max_tokens: int | None = None
    # Streams: completion text -> the engine's calls that count this request's tokens,
    # used when the engine sent no usage (torpor.engines.tokens).
    count_tokens: Callable[[str], TokenCalls | None] | None = None
    # The route the usage record names when the path holds an id ("/v1/videos/{video_id}").
    metered_route: str | None = None
    # The body as the proxy parsed it (what `body` holds), so a budget's reservation does
    # not parse it again; None: parsed when a budget needs it (async requests).
    payload: dict[str, Any] | None = None
    # Parsed body -> the engine's call that counts its prompt (torpor.engines.tokens), made
    # before reserving it against a budget; None when the engine cannot count.
    count_prompt: Callable[[dict[str, Any]], TokenCall | None] | None = None

    @property
    def route(self) -> str:
        return self.path.partition("?")[0]


class UsageMeter(Protocol):
    def budgeted(self, key: ApiKey, deployment: str) -> bool: ...

    def admit(
        self,
        key: ApiKey,
        deployment: str,
        route: str,
        payload: dict[str, Any],
        prompt_tokens: int | None = None,
    ) -> Reservation: ...

    def serving(self, worker_id: str, key_id: str, cold: bool) -> Callable[[], None]: ...

    def check(self, key: ApiKey, deployment: str) -> None: ...

    def record(self, usage: RequestUsage, hold: Reservation | None = None) -> None: ...


@dataclass
class _Trace:
    """What one request did, for its usage record."""

    cold: bool
    leased: float | None = None
    # The wake it waited for, in seconds, when its worker woke from sleep meanwhile.
    wake_s: float | None = None
    first_byte: float | None = None
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    complete: bool = False
    # The engine's tokenizer counting a finished stream after the client had its answer;
    # the usage record waits for it.
    counting: asyncio.Future[None] | None = None

    def usage(self, req: UpstreamRequest, now: float) -> RequestUsage:
        ms = 1000.0
        leased = self.leased if self.leased is not None else now
        return RequestUsage(
            at=datetime.now(UTC),
            deployment=req.deployment,
            key_id=req.key.id,
            session_id=req.session_id,
            route=req.metered_route or req.route,
            status=self.status,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            estimated=self.estimated,
            ttft_ms=(self.first_byte - req.arrived) * ms if self.first_byte else None,
            latency_ms=(now - req.arrived) * ms,
            queue_ms=(leased - req.arrived) * ms,
            cold_start=self.cold,
            stream=req.stream,
            woke_worker=self.wake_s is not None,
            wake_ms=self.wake_s * ms if self.wake_s is not None else None,
        )


# The engine's usage object sits at the end of a completion; read just that part.
_USAGE_RE = re.compile(rb'"usage"\s*:\s*(\{[^{}]*\})')


def _usage_of(body: bytes) -> tuple[int, int] | None:
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    m = _USAGE_RE.match(body, at)
    if m is None:
        return None
    try:
        usage = orjson.loads(m.group(1))
    except orjson.JSONDecodeError:
        return None
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return {}
    return payload if isinstance(payload, dict) else {}


@dataclass(frozen=True)
class Dispatcher:
    gate_for: Callable[[str], DeploymentGate | None]
    http: Callable[[], aiohttp.ClientSession]
    on_worker_broken: Callable[[str], None]
    keepalive_interval_s: float
    request_timeout_s: float
    connect_timeout_s: float
    # None turns metering off (the benchmark compares both).
    meter: UsageMeter | None = None
    # (deployment, worker): a request on this worker got no answer in time; the controller
    # checks the worker's health (torpor.controller.suspects).
    on_worker_timeout: Callable[[str, str], None] | None = None

    def gate(self, deployment: str) -> DeploymentGate:
        gate = self.gate_for(deployment)
        if gate is None:
            raise DeploymentUnavailable(
                f"Deployment not found or not running: no deployment named {deployment!r}"
            )
        return gate

    async def dispatch(self, req: UpstreamRequest, out: Sink) -> None:
        meter = self.meter
        gate = self.gate(req.deployment)
        hold = None
        if meter is not None and meter.budgeted(req.key, req.deployment):
            hold = await self._reserve(meter, gate, req)
        trace = _Trace(cold=not gate.routes)
        try:
            await self._forward(gate, req, out, trace)
        except TorporError as exc:
            trace.status = exc.status
            raise
        except asyncio.CancelledError:
            if not trace.complete:
                trace.status = 499  # the client went away before the answer was complete
            raise
        finally:
            if meter is not None:
                ended = time.monotonic()
                if trace.counting is not None and not trace.counting.done():
                    trace.counting.add_done_callback(
                        lambda _: meter.record(trace.usage(req, ended), hold)
                    )
                else:
                    meter.record(trace.usage(req, ended), hold)

    async def _forward(
        self, gate: DeploymentGate, req: UpstreamRequest, out: Sink, trace: _Trace
    ) -> None:
        call = _Upstream(self, req, trace)
        deadline = req.arrived + gate.wait_time_s
        for attempt in range(MAX_RETRIES + 1):
            lease = await _acquire(self, gate, req.session_id, req.stream, deadline, out, trace)
            if lease is None:
                return  # the error already went out as an SSE event
            trace.leased = time.monotonic()
            route = lease.route
            if route.woke_at is not None and route.woke_at >= req.arrived:
                trace.cold, trace.wake_s = False, route.wake_s  # a wake, not a cold start
            meter = self.meter
            served = meter.serving(lease.worker_id, req.key.id, trace.cold) if meter else None
            try:
                await call.run(lease, out)
                if trace.status == InferenceTimeout.status:  # in-band, mid-stream
                    self._timed_out(req.deployment, lease.worker_id)
                return
            except WorkerUnreachable as exc:
                log.warning(
                    "worker %s unreachable (attempt %d): %s", lease.worker_id, attempt + 1, exc
                )
                gate.report_broken(lease.worker_id)
                self.on_worker_broken(req.deployment)
            except InferenceTimeout:
                log.warning(
                    "worker %s took %s %s but did not answer in %.0fs",
                    lease.worker_id,
                    req.method,
                    req.route,
                    self.request_timeout_s,
                )
                self._timed_out(req.deployment, lease.worker_id)  # the controller checks it
                raise
            finally:
                lease.release()
                if served is not None:
                    served()  # chargeback: the worker's busy time of this request ends
        raise UpstreamError("No worker of this deployment could be reached, please retry")

    async def _reserve(
        self, meter: UsageMeter, gate: DeploymentGate, req: UpstreamRequest
    ) -> Reservation:
        """Reserve the request against its budgets: its prompt counted by the engine on a
        worker that is up (when the engine can count; the upper estimate otherwise, or
        when the count fails or takes too long) and its completion limit."""
        payload = req.payload if req.payload is not None else _json_object(req.body)
        call = req.count_prompt(payload) if req.count_prompt is not None else None
        counted = None
        if call is not None and gate.routes:
            url = next(iter(gate.routes.values())).url
            counted = await count_prompt(self.http(), url, call)
        hold = meter.admit(req.key, req.deployment, req.route, payload, counted)
        if hold.body is not None:
            req.body = hold.body  # the completion limit lowered to what the budget has left
        return hold

    def _timed_out(self, deployment: str, worker_id: str) -> None:
        if self.on_worker_timeout is not None:
            self.on_worker_timeout(deployment, worker_id)
        else:
            self.on_worker_broken(deployment)

    def timeout_error(self) -> InferenceTimeout:
        return InferenceTimeout(f"Inference timed out after {self.request_timeout_s:g}s")


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

    def __init__(self, deps: Dispatcher, req: UpstreamRequest, trace: _Trace):
        self.deps, self.req, self.trace = deps, req, trace
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
        except aiohttp.ConnectionTimeoutError as exc:
            raise WorkerUnreachable("connect timeout") from exc
        except TimeoutError:
            # The worker accepted the request and stayed silent: never sent twice.
            raise self.deps.timeout_error() from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientOSError) as exc:
            # Refused, reset, or the process died before answering: nothing reached the
            # client, and a dead worker did not run the request to its end.
            raise WorkerUnreachable(str(exc) or type(exc).__name__) from exc
        complete = False
        try:
            if req.stream and resp.status == 200:
                await self._pass_stream(resp, worker, out, lease.route.url)
            else:
                try:
                    data = await resp.read()
                except TimeoutError:
                    raise self.deps.timeout_error() from None
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                    if out.started:
                        raise UpstreamError() from exc
                    raise WorkerUnreachable(str(exc)) from exc
                await self._relay(resp, data, worker, out)
            complete = True
        finally:
            if complete:
                resp.release()
            else:
                # Dropping the connection is how the engine learns the client is gone.
                resp.close()

    async def _pass_stream(
        self, resp: aiohttp.ClientResponse, worker: tuple[bytes, bytes], out: Sink, url: str
    ) -> None:
        """Chunk by chunk to the client; usage is read on the way. When the engine sent
        none, its tokenizer counts the stream once it is over: before the usage chunk the
        client asked for, else after the client has its whole answer."""
        req, trace = self.req, self.trace
        scanner = StreamUsage(
            req.strip_usage_chunk, req.want_usage_chunk, collect_text=req.count_tokens is not None
        )
        trace.status = 200
        if not out.started:
            await out.start_sse([worker])
        try:
            async for chunk in resp.content.iter_any():
                if trace.first_byte is None:
                    trace.first_byte = time.monotonic()
                data = scanner.feed(chunk)
                trace.complete = scanner.done
                if data:
                    await out.body(data)
        except TimeoutError:
            trace.status = InferenceTimeout.status
            await out.error(self.deps.timeout_error())
            return
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            trace.status = UpstreamError.status
            await out.error(UpstreamError())
            return
        except asyncio.CancelledError:
            # A client that had `[DONE]` may hang up before the engine closes the stream.
            calls = self._calls(scanner)
            if calls is not None:
                trace.counting = asyncio.ensure_future(self._count(url, calls, scanner))
            raise
        finally:
            trace.prompt_tokens, trace.completion_tokens = scanner.tokens()
            trace.estimated = scanner.estimated
        calls = self._calls(scanner)
        if calls is not None and not req.want_usage_chunk:
            # The client has its answer first (and may hang up: the count goes on).
            trace.counting = asyncio.ensure_future(self._count(url, calls, scanner))
            await out.body(scanner.flush(), more=False)
            return
        if calls is not None:
            await self._count(url, calls, scanner)
        await out.body(scanner.release() + scanner.flush(), more=False)

    def _calls(self, scanner: StreamUsage) -> TokenCalls | None:
        """The engine's token count calls for a finished stream that reported no usage."""
        counter = self.req.count_tokens
        if counter is None or not scanner.done or scanner.engine_usage:
            return None
        return counter(scanner.text)

    async def _count(self, url: str, calls: TokenCalls, scanner: StreamUsage) -> None:
        counts = await count_tokens(self.deps.http(), url, calls)
        if counts is not None:
            scanner.counted(*counts)
            trace = self.trace
            trace.prompt_tokens, trace.completion_tokens = counts
            trace.estimated = False

    async def _relay(
        self,
        resp: aiohttp.ClientResponse,
        data: bytes,
        worker: tuple[bytes, bytes],
        out: Sink,
    ) -> None:
        trace = self.trace
        trace.first_byte = time.monotonic()
        error = engine_error(resp.status, data, self.req.route)
        if resp.status >= 500:
            log.warning("worker answered %d: %s", resp.status, data[:500])
        if error is not None:
            raise error
        trace.status = resp.status
        if resp.status == 200:
            usage = _usage_of(data)
            if usage is not None:
                trace.prompt_tokens, trace.completion_tokens = usage
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
    trace: _Trace,
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
            trace.status = exc.status
            await out.error(exc)
            return None
        raise
    except BaseException:
        gate.abandon(waiter)
        raise
