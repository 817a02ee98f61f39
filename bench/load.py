"""The load client: one aiohttp session, asyncio for concurrency, TTFT from the first SSE
data chunk that carries content, errors counted by code."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

# A delta or text with at least one character: the first token, not the role chunk.
_CONTENT = re.compile(rb'"(?:content|text)":\s?"[^"]')
_ERROR = re.compile(rb'data:\s?\{"error"')


@dataclass
class Sample:
    start: float
    end: float
    ttft: float | None
    status: int
    error: str | None = None
    worker: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency(self) -> float:
        return self.end - self.start


def new_session(connect_timeout_s: float = 30.0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s),
        auto_decompress=False,
    )


@dataclass(frozen=True)
class Call:
    """One kind of request, prepared once (the body is encoded once)."""

    url: str
    body: bytes
    headers: dict[str, str]
    stream: bool
    timeout_s: float = 120.0

    @staticmethod
    def chat(
        base_url: str,
        model: str,
        messages: Sequence[dict[str, str]],
        stream: bool,
        headers: dict[str, str] | None = None,
        timeout_s: float = 120.0,
        **extra: Any,
    ) -> Call:
        payload: dict[str, Any] = {"model": model, "messages": list(messages), "stream": stream}
        payload.update(extra)
        return Call(
            url=base_url.rstrip("/") + "/chat/completions",
            body=orjson.dumps(payload),
            headers={"Content-Type": "application/json", **(headers or {})},
            stream=stream,
            timeout_s=timeout_s,
        )


def _error_code(data: bytes) -> str | None:
    try:
        err = orjson.loads(data).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if isinstance(err, dict):
        code = err.get("code") or err.get("type")
        return str(code) if code is not None else None
    return None


def _sse_error(data: bytes) -> str:
    """`sse_error:<code>` from the first error event in `data`."""
    for line in data.split(b"\n"):
        if line.startswith(b"data:") and b'"error"' in line:
            code = _error_code(line[5:].strip())
            return f"sse_error:{code}" if code else "sse_error"
    return "sse_error"


async def send(
    session: aiohttp.ClientSession,
    call: Call,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Sample:
    """Send one request and read the whole answer."""
    start = time.perf_counter()
    ttft: float | None = None
    status = 0
    worker: str | None = None
    timeout = aiohttp.ClientTimeout(total=call.timeout_s, sock_connect=30)
    try:
        async with session.post(
            call.url,
            data=body if body is not None else call.body,
            headers={**call.headers, **(headers or {})},
            timeout=timeout,
        ) as resp:
            status = resp.status
            worker = resp.headers.get("x-torpor-worker")
            if status != 200:
                data = await resp.read()
                code = _error_code(data)
                error: str | None = f"http_{status}" + (f":{code}" if code else "")
                return Sample(start, time.perf_counter(), None, status, error, worker)
            if not call.stream:
                await resp.read()
                end = time.perf_counter()
                return Sample(start, end, end - start, status, None, worker)
            head = b""
            tail = b""
            error = None
            async for chunk in resp.content.iter_any():
                if ttft is None:
                    head += chunk
                    if _CONTENT.search(head):
                        ttft = time.perf_counter() - start
                    if error is None and _ERROR.search(head):
                        error = _sse_error(head)
                elif error is None and b'{"error"' in chunk:
                    error = _sse_error(chunk)
                tail = (tail + chunk)[-64:]
            end = time.perf_counter()
            if error is None and b"[DONE]" not in tail:
                error = "truncated_stream"
            return Sample(start, end, ttft, status, error, worker)
    except TimeoutError:
        return Sample(start, time.perf_counter(), ttft, status, "timeout", worker)
    except aiohttp.ClientConnectorError:
        return Sample(start, time.perf_counter(), ttft, status, "connect_error", worker)
    except aiohttp.ServerDisconnectedError:
        return Sample(start, time.perf_counter(), ttft, status, "server_disconnected", worker)
    except (aiohttp.ClientError, OSError) as exc:
        return Sample(start, time.perf_counter(), ttft, status, type(exc).__name__, worker)


# -- load shapes ------------------------------------------------------------------------


@dataclass
class LoadRun:
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    # Whether `samples` holds every request (the window after the warm-up was too short to
    # see enough answers, e.g. a slow gateway at high concurrency).
    all_samples: bool = False
    ok: int = 0
    wall_s: float = 0.0

    @property
    def rps(self) -> float:
        """Successful requests per second over the whole run (warm-up included)."""
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0


async def closed_loop(
    fire: Callable[[], Awaitable[Sample]],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
) -> LoadRun:
    """`concurrency` clients, each sending its next request when the last one is done, until
    `warmup_s + duration_s` have passed; then the requests in flight finish.

    Latencies count the requests started after the warm-up (all of them when fewer than
    `concurrency` started then)."""
    t0 = time.perf_counter()
    begin, stop_at = t0 + warmup_s, t0 + warmup_s + duration_s
    everything: list[Sample] = []

    async def client() -> None:
        while time.perf_counter() < stop_at:
            s = await fire()
            everything.append(s)
            if not s.ok and s.latency < 0.01:
                await asyncio.sleep(0.01)  # no hot loop on instant failures

    await asyncio.gather(*(client() for _ in range(concurrency)))
    run = LoadRun(concurrency, wall_s=time.perf_counter() - t0)
    run.ok = sum(1 for s in everything if s.ok)
    run.samples = [s for s in everything if s.start >= begin]
    if len(run.samples) < max(concurrency, 20):
        run.samples, run.all_samples = everything, True
    return run


async def open_at_once(fire: Callable[[], Awaitable[Sample]], n: int) -> list[Sample]:
    """`n` requests started together."""
    return list(await asyncio.gather(*(fire() for _ in range(n))))


# -- statistics -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return percentile(xs, 50) if xs else None


def ms(value: float | None) -> float | None:
    return round(value * 1000.0, 3) if value is not None else None


def summary_ms(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": ms(percentile(values, 50)),
        "p90": ms(percentile(values, 90)),
        "p99": ms(percentile(values, 99)),
        "mean": ms(sum(values) / len(values)) if values else None,
        "max": ms(max(values)) if values else None,
    }


def errors_by_code(samples: Sequence[Sample]) -> dict[str, int]:
    return dict(Counter(s.error for s in samples if s.error is not None))


class RssSampler:
    """Peak resident memory of a process tree while a block runs."""

    def __init__(self, read: Callable[[], int], interval_s: float = 0.25):
        self._read = read
        self._interval = interval_s
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            self.peak = max(self.peak, self._read())
            await asyncio.sleep(self._interval)

    async def __aenter__(self) -> RssSampler:
        self.peak = self._read()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peak = max(self.peak, self._read())

    @property
    def peak_mib(self) -> float:
        return round(self.peak / 2**20, 1)
