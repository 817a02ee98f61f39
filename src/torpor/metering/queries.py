"""Read side of metering: summaries, series, percentiles and invoices.

Summaries read the hourly rollups (kept current at every flush), plus the raw events of
the partial first hour of the window, so a 24 h query touches at most one hour of raw
rows however many millions of events the table holds.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, true
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from torpor.metering.meter import RequestUsage, hour_of
from torpor.metering.pricing import HOURS_PER_MONTH
from torpor.metering.records import money, money_decimal
from torpor.metering.tables import (
    GpuHourlyRow,
    StorageHourlyRow,
    UsageEventRow,
    UsageHourlyRow,
)
from torpor.metering.writes import GpuDelta

WINDOWS = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(hours=24),
           "7d": timedelta(days=7), "30d": timedelta(days=30)}  # fmt: skip
STEPS = {"1m": timedelta(minutes=1), "5m": timedelta(minutes=5), "15m": timedelta(minutes=15),
         "1h": timedelta(hours=1), "1d": timedelta(days=1)}  # fmt: skip


@dataclass(frozen=True)
class Scope:
    """What the caller may see: None means everything."""

    deployments: frozenset[str] | None = None
    key_id: str | None = None
    deployment: str | None = None

    def hourly(self) -> ColumnElement[bool]:
        return self._where(UsageHourlyRow.deployment, UsageHourlyRow.key_id)

    def events(self) -> ColumnElement[bool]:
        return self._where(UsageEventRow.deployment, UsageEventRow.key_id)

    def _where(self, dep_col: Any, key_col: Any) -> ColumnElement[bool]:
        conds: list[ColumnElement[bool]] = []
        if self.deployments is not None:
            conds.append(dep_col.in_(sorted(self.deployments)))
        if self.key_id is not None:
            conds.append(key_col == self.key_id)
        if self.deployment is not None:
            conds.append(dep_col == self.deployment)
        return and_(true(), *conds)

    def admits(self, deployment: str, key_id: str | None) -> bool:
        """Whether usage of (deployment, key) is in the caller's scope (as `_where`), for
        what is not read from the store: events not yet flushed, GPU time, sessions."""
        if self.deployments is not None and deployment not in self.deployments:
            return False
        if self.deployment is not None and deployment != self.deployment:
            return False
        return self.key_id is None or key_id == self.key_id


def _event_acc(e: RequestUsage) -> _Acc:
    ttft = e.ttft_ms if e.ttft_ms is not None else e.latency_ms
    return _Acc(1, int(e.status >= 400), e.prompt_tokens, e.completion_tokens, e.latency_ms,
                ttft, 1, int(e.cold_start), e.cost_nusd)  # fmt: skip


def _ceil_hour(at: datetime) -> datetime:
    floor = hour_of(at)
    return floor if floor == at else floor + timedelta(hours=1)


@dataclass
class _Acc:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_sum: float = 0.0
    ttft_sum: float = 0.0
    ttft_count: int = 0
    cold_starts: int = 0
    cost_nusd: int = 0

    def add(self, other: _Acc) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def view(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "avg_latency_ms": round(self.latency_sum / self.requests, 3) if self.requests else 0.0,
            "avg_ttft_ms": round(self.ttft_sum / self.ttft_count, 3) if self.ttft_count else 0.0,
            "cold_starts": self.cold_starts,
            "cost": money(self.cost_nusd, nano=True),
        }


_H = UsageHourlyRow
# The rollup counters summed over a group, labelled as _hourly_acc reads them.
_ROLLUP_SUMS = (
    func.sum(_H.requests).label("requests"),
    func.sum(_H.errors).label("errors"),
    func.sum(_H.prompt_tokens).label("prompt_tokens"),
    func.sum(_H.completion_tokens).label("completion_tokens"),
    func.sum(_H.latency_ms_sum).label("latency_ms_sum"),
    func.sum(_H.ttft_ms_sum).label("ttft_ms_sum"),
    func.sum(_H.ttft_count).label("ttft_count"),
    func.sum(_H.cold_starts).label("cold_starts"),
    func.sum(_H.cost_nusd).label("cost_nusd"),
)


def _hourly_acc(r: Any) -> _Acc:
    return _Acc(
        int(r.requests or 0), int(r.errors or 0), int(r.prompt_tokens or 0),
        int(r.completion_tokens or 0), float(r.latency_ms_sum or 0), float(r.ttft_ms_sum or 0),
        int(r.ttft_count or 0), int(r.cold_starts or 0), int(r.cost_nusd or 0),
    )  # fmt: skip


async def _grouped(
    engine: AsyncEngine,
    scope: Scope,
    start: datetime,
    now: datetime,
    by_deployment: bool,
    pending: Sequence[RequestUsage] = (),
) -> dict[str, _Acc]:
    """Totals for [start, now], grouped by deployment (or all under "")."""
    h0 = _ceil_hour(start)
    out: dict[str, _Acc] = defaultdict(_Acc)
    h = UsageHourlyRow
    e = UsageEventRow
    async with AsyncSession(engine) as s:
        group = [h.deployment] if by_deployment else []
        rows = await s.execute(
            select(
                *group,
                *_ROLLUP_SUMS,
            )
            .where(h.hour >= h0, scope.hourly())
            .group_by(*group)
        )
        for r in rows:
            out[r.deployment if by_deployment else ""].add(_hourly_acc(r))
        if h0 > start:
            egroup = [e.deployment] if by_deployment else []
            raw = await s.execute(
                select(
                    *egroup,
                    func.count().label("requests"),
                    func.sum(func.cast(e.status >= 400, type_=h.requests.type)).label("errors"),
                    func.sum(e.prompt_tokens).label("prompt_tokens"),
                    func.sum(e.completion_tokens).label("completion_tokens"),
                    func.sum(e.latency_ms).label("latency_ms_sum"),
                    # No first byte: its latency is its time to first token (same set).
                    func.sum(func.coalesce(e.ttft_ms, e.latency_ms)).label("ttft_ms_sum"),
                    func.count().label("ttft_count"),
                    func.sum(func.cast(e.cold_start, type_=h.requests.type)).label("cold_starts"),
                    func.sum(e.cost_nusd).label("cost_nusd"),
                )
                .where(e.at >= start, e.at < h0, scope.events())
                .group_by(*egroup)
            )
            for r in raw:
                if r.requests:
                    out[r.deployment if by_deployment else ""].add(_hourly_acc(r))
    for ev in pending:
        if ev.at >= start and scope.admits(ev.deployment, ev.key_id):
            out[ev.deployment if by_deployment else ""].add(_event_acc(ev))
    return out


async def summary(
    engine: AsyncEngine,
    scope: Scope,
    window: timedelta,
    now: datetime,
    pending: Sequence[RequestUsage] = (),
) -> dict[str, Any]:
    totals = await _grouped(engine, scope, now - window, now, False, pending)
    return totals.get("", _Acc()).view()


async def by_deployment(
    engine: AsyncEngine,
    scope: Scope,
    window: timedelta,
    now: datetime,
    pending: Sequence[RequestUsage] = (),
) -> list[dict[str, Any]]:
    totals = await _grouped(engine, scope, now - window, now, True, pending)
    rows = [{"deployment": dep, **acc.view()} for dep, acc in totals.items()]
    return sorted(rows, key=lambda r: (-r["cost"], r["deployment"]))


def _bucket(at: datetime, start: datetime, step: timedelta) -> datetime:
    return start + step * math.floor((at - start) / step)


async def timeseries(
    engine: AsyncEngine,
    scope: Scope,
    window: timedelta,
    step: timedelta,
    now: datetime,
    pending: Sequence[RequestUsage] = (),
) -> list[dict[str, Any]]:
    """Per bucket: request rate, tokens, latency, tokens per second, cost. Steps of an hour
    or more come from the rollups; shorter steps from the raw events."""
    hourly = step >= timedelta(hours=1)
    start = hour_of(now - window) + (timedelta(hours=1) if hourly else timedelta(0))
    if not hourly:
        start = now - window
    buckets: dict[datetime, _Acc] = defaultdict(_Acc)
    async with AsyncSession(engine) as s:
        if hourly:
            h = UsageHourlyRow
            rows = await s.execute(
                select(
                    h.hour,
                    *_ROLLUP_SUMS,
                )
                .where(h.hour >= start, scope.hourly())
                .group_by(h.hour)
            )
            for r in rows:
                buckets[_bucket(_utc(r.hour), start, step)].add(_hourly_acc(r))
        else:
            e = UsageEventRow
            raw = await s.execute(
                select(e.at, e.status, e.prompt_tokens, e.completion_tokens, e.latency_ms,
                       e.ttft_ms, e.cold_start, e.cost_nusd).where(e.at >= start, scope.events())
            )  # fmt: skip
            for at, status, pt, ct, lat, ttft, cold, cost in raw:
                acc = buckets[_bucket(_utc(at), start, step)]
                acc.add(_Acc(1, int(status >= 400), pt, ct, lat,
                             ttft if ttft is not None else lat, 1, int(cold), cost))  # fmt: skip
    for ev in pending:
        if ev.at >= start and scope.admits(ev.deployment, ev.key_id):
            buckets[_bucket(ev.at, start, step)].add(_event_acc(ev))
    series = []
    at = start
    seconds = step.total_seconds()
    while at <= now:
        acc = buckets.get(at, _Acc())
        view = acc.view()
        tokens = acc.prompt_tokens + acc.completion_tokens
        series.append({
            "start": at.isoformat(),
            "requests": acc.requests,
            "errors": acc.errors,
            "request_rate": round(acc.requests / seconds, 6),
            "prompt_tokens": acc.prompt_tokens,
            "completion_tokens": acc.completion_tokens,
            "tokens": tokens,
            "avg_latency_ms": view["avg_latency_ms"],
            "avg_ttft_ms": view["avg_ttft_ms"],
            "tokens_per_s": round(acc.completion_tokens / (acc.latency_sum / 1000), 3)
            if acc.latency_sum else 0.0,
            "cost": view["cost"],
        })  # fmt: skip
        at += step
    return series


class UsageHistory:
    """When deployments had requests, from the hourly rollups (kept past raw retention):
    what predictive pre-warm learns from (torpor.controller.sleep.BurstHistory)."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def active_hours(
        self, deployments: Sequence[str], since: datetime
    ) -> dict[str, list[datetime]]:
        h = UsageHourlyRow
        out: dict[str, list[datetime]] = {name: [] for name in deployments}
        if not deployments:
            return out
        async with AsyncSession(self.engine) as s:
            rows = await s.execute(
                select(h.deployment, h.hour)
                .where(h.deployment.in_(list(deployments)), h.hour >= since, h.requests > 0)
                .group_by(h.deployment, h.hour)
            )
            for name, hour in rows:
                out[name].append(_utc(hour))
        return out


async def last_used(
    engine: AsyncEngine, pending: Sequence[RequestUsage] = ()
) -> dict[str, datetime]:
    """When each key last made a metered request (within the raw events' retention)."""
    e = UsageEventRow
    async with AsyncSession(engine) as s:
        rows = await s.execute(select(e.key_id, func.max(e.at)).group_by(e.key_id))
        out = {key_id: _utc(at) for key_id, at in rows if at is not None}
    for ev in pending:
        if ev.key_id not in out or ev.at > out[ev.key_id]:
            out[ev.key_id] = ev.at
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (0 when empty)."""
    if not values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(values)))
    return float(values[min(rank, len(values)) - 1])


def _pcts(values: list[float]) -> dict[str, float]:
    values.sort()
    return {f"p{q}": round(percentile(values, q), 3) for q in (50, 95, 99)}


async def deployment_metrics(
    engine: AsyncEngine,
    scope: Scope,
    name: str,
    window: timedelta,
    now: datetime,
    pending: Sequence[RequestUsage] = (),
) -> dict[str, Any]:
    start = now - window
    step = max(timedelta(minutes=1), window / 60)
    e = UsageEventRow
    async with AsyncSession(engine) as s:
        rows = (await s.execute(
            select(e.at, e.latency_ms, e.ttft_ms, e.cold_start, e.wake_ms).where(
                e.deployment == name, e.at >= start, scope.events())
        )).all()  # fmt: skip
    # Requests that waited for a cold start, and for a sleeping worker's wake (its length).
    fresh = [ev for ev in pending if ev.deployment == name and ev.at >= start
             and scope.admits(ev.deployment, ev.key_id)]  # fmt: skip
    cold = sum(1 for r in rows if r.cold_start) + sum(1 for ev in fresh if ev.cold_start)
    wakes = [float(r.wake_ms) for r in rows if r.wake_ms is not None]
    wakes += [ev.wake_ms for ev in fresh if ev.wake_ms is not None]
    # Rows, then requests not yet flushed: (at, latency, ttft) alike.
    points: list[tuple[datetime, float, float | None]] = [
        (_utc(r.at), float(r.latency_ms), r.ttft_ms) for r in rows
    ]
    points += [(ev.at, ev.latency_ms, ev.ttft_ms) for ev in fresh]
    latencies = [lat for _, lat, _ in points]
    # A request without a first byte counts its latency as its time to first token.
    ttfts = [float(ttft if ttft is not None else lat) for _, lat, ttft in points]
    per_bucket: dict[datetime, list[float]] = defaultdict(list)
    for at, lat, _ in points:
        per_bucket[_bucket(at, start, step)].append(lat)
    rps, latency = [], []
    at = start
    while at <= now:
        values = sorted(per_bucket.get(at, []))
        rps.append({"start": at.isoformat(), "value": round(len(values) / step.total_seconds(), 6)})
        latency.append({"start": at.isoformat(), "p50": round(percentile(values, 50), 3),
                        "p95": round(percentile(values, 95), 3)})  # fmt: skip
        at += step
    return {
        "total_requests": len(points),
        "latency_ms": _pcts(latencies),
        "ttft_ms": _pcts(ttfts),
        "cold_start_requests": cold,
        "woke_requests": len(wakes),
        "wake_ms": _pcts(wakes),
        "step_s": step.total_seconds(),
        "rps": rps,
        "latency": latency,
    }


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def month_bounds(month: str) -> tuple[datetime, datetime]:
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


async def invoice(
    engine: AsyncEngine,
    scope: Scope,
    month: str,
    key_names: dict[str, str],
    now: datetime,
    pending: Sequence[RequestUsage] = (),
    pending_gpu: Sequence[GpuDelta] = (),
) -> list[dict[str, Any]]:
    """Lines per key and deployment (tokens), plus per deployment (GPU and storage time)."""
    start, end = month_bounds(month)
    lines: dict[tuple[str | None, str], dict[str, Any]] = {}

    def line(key_id: str | None, dep: str) -> dict[str, Any]:
        return lines.setdefault((key_id, dep), {
            "key_id": key_id, "key_name": key_names.get(key_id or "") if key_id else None,
            "deployment": dep, "requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "token_cost": 0, "gpu_hours": 0.0, "sleeping_gpu_hours": 0.0, "gpu_cost": 0,
            "storage_gb_months": 0.0, "storage_cost": 0,
        })  # fmt: skip

    h = UsageHourlyRow
    async with AsyncSession(engine) as s:
        rows = await s.execute(
            select(h.key_id, h.deployment, func.sum(h.requests), func.sum(h.prompt_tokens),
                   func.sum(h.completion_tokens), func.sum(h.cost_nusd))
            .where(h.hour >= start, h.hour < end, scope.hourly())
            .group_by(h.key_id, h.deployment)
        )  # fmt: skip
        for key_id, dep, n, pt, ct, cost in rows:
            ln = line(key_id, dep)
            ln.update(requests=int(n or 0), prompt_tokens=int(pt or 0),
                      completion_tokens=int(ct or 0), token_cost=int(cost or 0))  # fmt: skip
        # GPU time: attributed to keys (chargeback), the rest (idle, start-up) to the
        # deployment's own line; all lines of a deployment sum to its workers' billed time.
        g = GpuHourlyRow
        gpu = await s.execute(
            select(g.key_id, g.deployment, func.sum(g.gpu_seconds), func.sum(g.cost_nusd),
                   func.sum(g.sleeping_gpu_seconds))
            .where(g.hour >= start, g.hour < end)
            .group_by(g.key_id, g.deployment)
        )  # fmt: skip
        gpu_rows = [*gpu, *((d.key_id, d.deployment, d.gpu_seconds, d.cost_nusd,
                             d.sleeping_gpu_seconds)
                            for d in pending_gpu if start <= d.hour < end)]  # fmt: skip
        for key_id, dep, seconds, nusd, slept in gpu_rows:
            if not scope.admits(dep, key_id or None):
                continue
            ln = line(key_id or None, dep)
            ln["gpu_hours"] += float(seconds or 0) / 3600
            # Part of gpu_hours: the deployment's workers slept (at the sleeping rate).
            ln["sleeping_gpu_hours"] += float(slept or 0) / 3600
            ln["gpu_cost"] += int(nusd or 0)
        if scope.key_id is None:
            st = StorageHourlyRow
            storage = await s.execute(
                select(st.deployment, func.sum(st.gb_seconds), func.sum(st.cost_nusd))
                .where(st.hour >= start, st.hour < end).group_by(st.deployment)
            )  # fmt: skip
            for dep, gb_s, cost in storage:
                if scope.deployments is not None and dep not in scope.deployments:
                    continue
                if scope.deployment is not None and dep != scope.deployment:
                    continue
                ln = line(None, dep)
                ln["storage_gb_months"] = float(gb_s or 0) / 3600 / HOURS_PER_MONTH
                ln["storage_cost"] = int(cost or 0)
    for ev in pending:
        if start <= ev.at < end and scope.admits(ev.deployment, ev.key_id):
            ln = line(ev.key_id, ev.deployment)
            ln["requests"] += 1
            ln["prompt_tokens"] += ev.prompt_tokens
            ln["completion_tokens"] += ev.completion_tokens
            ln["token_cost"] += ev.cost_nusd
    out = []
    for ln in lines.values():
        # Money rounded to MONEY_PLACES; the line's total is the sum of its rounded parts.
        parts = [money_decimal(ln[n], nano=True) for n in _COSTS]
        for name, part in zip(_COSTS, parts, strict=True):
            ln[name] = float(part)
        ln["total_cost"] = float(sum(parts, Decimal(0)))
        out.append(ln)
    return sorted(out, key=lambda r: (r["deployment"], r["key_id"] or ""))


_COSTS = ("token_cost", "gpu_cost", "storage_cost")
INVOICE_COLUMNS = (
    "key_id", "key_name", "deployment", "requests", "prompt_tokens", "completion_tokens",
    "token_cost", "gpu_hours", "sleeping_gpu_hours", "gpu_cost", "storage_gb_months",
    "storage_cost", "total_cost",
)  # fmt: skip


def invoice_total(lines: list[dict[str, Any]]) -> float:
    """The sum of the lines' (rounded) totals, exactly."""
    return float(sum((money_decimal(ln["total_cost"]) for ln in lines), Decimal(0)))


def invoice_csv(lines: list[dict[str, Any]]) -> str:
    """Invoice lines as CSV, money with MONEY_PLACES fixed decimals."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=INVOICE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for ln in lines:
        row = {k: ln.get(k) for k in INVOICE_COLUMNS}
        for name in (*_COSTS, "total_cost"):
            row[name] = f"{money_decimal(ln[name]):f}"
        writer.writerow(row)
    return buf.getvalue()
