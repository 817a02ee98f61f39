"""Chargeback: per key tokens, token cost, attributed GPU-seconds and GPU cost for a month,
with the deployments' own (idle and start-up) GPU time and their workers' billed time.

Reads never write: usage not yet flushed (the meter's buffer) is merged in; a flush that
committed while the read ran makes it read again, so nothing is counted twice or missed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from torpor.metering.meter import Meter
from torpor.metering.queries import Scope, month_bounds
from torpor.metering.records import RequestUsage, WorkerSession, money, money_decimal
from torpor.metering.tables import GpuHourlyRow, UsageHourlyRow, WorkerSessionRow
from torpor.metering.writes import GpuDelta, hour_of
from torpor.store.db import as_utc


def _key_line(key_id: str, names: dict[str, str]) -> dict[str, Any]:
    return {
        "key_id": key_id, "key_name": names.get(key_id), "deployments": set(),
        "requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "token_cost_nusd": 0,
        "gpu_seconds": 0.0, "gpu_cost_nusd": 0, "cold_start_gpu_seconds": 0.0,
    }  # fmt: skip


def _dep_line(dep: str) -> dict[str, Any]:
    return {
        "deployment": dep, "idle_gpu_seconds": 0.0, "sleeping_gpu_seconds": 0.0,
        "startup_gpu_seconds": 0.0,
        "gpu_seconds": 0.0, "gpu_cost_nusd": 0, "billed_gpu_seconds": 0.0,
    }  # fmt: skip


async def by_key(
    meter: Meter, engine: AsyncEngine, scope: Scope, month: str, names: dict[str, str]
) -> dict[str, Any]:
    return await meter.read(
        lambda events, gpu: _read(engine, scope, month, names, events, gpu, meter.open_sessions())
    )


async def _read(
    engine: AsyncEngine,
    scope: Scope,
    month: str,
    names: dict[str, str],
    events: list[RequestUsage],
    gpu: list[GpuDelta],
    live: Iterable[WorkerSession],
) -> dict[str, Any]:
    start, end = month_bounds(month)
    keys: dict[str, dict[str, Any]] = {}
    deps: dict[str, dict[str, Any]] = {}

    def key(key_id: str) -> dict[str, Any]:
        return keys.setdefault(key_id, _key_line(key_id, names))

    def dep(name: str) -> dict[str, Any]:
        return deps.setdefault(name, _dep_line(name))

    h, g, w = UsageHourlyRow, GpuHourlyRow, WorkerSessionRow
    async with AsyncSession(engine) as s:
        rows = await s.execute(
            select(h.key_id, h.deployment, func.sum(h.requests), func.sum(h.prompt_tokens),
                   func.sum(h.completion_tokens), func.sum(h.cost_nusd))
            .where(h.hour >= start, h.hour < end, scope.hourly())
            .group_by(h.key_id, h.deployment)
        )  # fmt: skip
        for key_id, name, n, pt, ct, cost in rows:
            ln = key(key_id)
            ln["deployments"].add(name)
            ln["requests"] += int(n or 0)
            ln["prompt_tokens"] += int(pt or 0)
            ln["completion_tokens"] += int(ct or 0)
            ln["token_cost_nusd"] += int(cost or 0)
        gpu_rows = await s.execute(
            select(g.key_id, g.deployment, func.sum(g.gpu_seconds), func.sum(g.idle_gpu_seconds),
                   func.sum(g.startup_gpu_seconds), func.sum(g.cold_start_gpu_seconds),
                   func.sum(g.cost_nusd), func.sum(g.sleeping_gpu_seconds))
            .where(g.hour >= start, g.hour < end)
            .group_by(g.key_id, g.deployment)
        )  # fmt: skip
        for key_id, name, secs, idle, startup, cold, nusd, slept in gpu_rows:
            _add_gpu(scope, key, dep, GpuDelta(start, name, key_id, float(secs or 0),
                     float(idle or 0), float(startup or 0), float(cold or 0), int(nusd or 0),
                     float(slept or 0)))  # fmt: skip
        sessions = {}
        if scope.key_id is None:
            found = await s.scalars(
                select(w).where(w.started_at < end, (w.stopped_at.is_(None)) | (w.stopped_at >= start))
            )  # fmt: skip
            for row in found:
                ended = row.stopped_at or row.heartbeat_at or row.started_at
                sessions[row.worker_id] = (row.deployment, row.started_at, ended, row.gpu_count)
    for e in events:
        if start <= e.at < end and scope.admits(e.deployment, e.key_id):
            ln = key(e.key_id)
            ln["deployments"].add(e.deployment)
            ln["requests"] += 1
            ln["prompt_tokens"] += e.prompt_tokens
            ln["completion_tokens"] += e.completion_tokens
            ln["token_cost_nusd"] += e.cost_nusd
    for d in gpu:
        if start <= d.hour < end:
            _add_gpu(scope, key, dep, d)
    if scope.key_id is None:
        for ws in live:  # what the meter holds is newer than the stored row
            ended = ws.stopped_at or ws.accrued_to or ws.started_at
            sessions[ws.worker_id] = (ws.deployment, ws.started_at, ended, ws.gpu_count)
        for name, began, ended, gpus in sessions.values():
            if scope.admits(name, None):
                b, e2 = max(as_utc(began), start), min(as_utc(ended), end)
                dep(name)["billed_gpu_seconds"] += max(0.0, (e2 - b).total_seconds()) * gpus
    data = []
    for ln in sorted(keys.values(), key=lambda x: (-x["token_cost_nusd"], x["key_id"])):
        # Money rounded to MONEY_PLACES (torpor.metering.records); the total is the sum of
        # the rounded parts.
        token = money_decimal(ln.pop("token_cost_nusd"), nano=True)
        gpu_cost = money_decimal(ln.pop("gpu_cost_nusd"), nano=True)
        ln["deployments"] = sorted(ln["deployments"])
        ln["total_tokens"] = ln["prompt_tokens"] + ln["completion_tokens"]
        ln["token_cost"] = float(token)
        ln["gpu_cost"] = float(gpu_cost)
        ln["total_cost"] = float(token + gpu_cost)
        data.append(ln)
    own = []
    for d2 in sorted(deps.values(), key=lambda x: x["deployment"]):
        d2["gpu_cost"] = float(money_decimal(d2.pop("gpu_cost_nusd"), nano=True))
        own.append(d2)
    return {"month": month, "data": data, "deployments": own if scope.key_id is None else []}


def _add_gpu(scope: Scope, key: Any, dep: Any, d: GpuDelta) -> None:
    if not d.key_id:
        if scope.key_id is None and scope.admits(d.deployment, None):
            ln = dep(d.deployment)
            ln["idle_gpu_seconds"] += d.idle_gpu_seconds
            ln["sleeping_gpu_seconds"] += d.sleeping_gpu_seconds
            ln["startup_gpu_seconds"] += d.startup_gpu_seconds
            ln["gpu_seconds"] += d.gpu_seconds
            ln["gpu_cost_nusd"] += d.cost_nusd
        return
    if not scope.admits(d.deployment, d.key_id):
        return
    ln = key(d.key_id)
    ln["deployments"].add(d.deployment)
    ln["gpu_seconds"] += d.gpu_seconds
    ln["gpu_cost_nusd"] += d.cost_nusd
    ln["cold_start_gpu_seconds"] += d.cold_start_gpu_seconds


__all__ = ["by_key", "hour_of", "money"]
