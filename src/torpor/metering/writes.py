"""Writing metering to the store: rows of events, rollups, worker sessions, GPU time.

Helpers for the meter's flush; every write adds to counters in one statement (an INSERT
or an add to the existing row), so concurrent flushes of several processes never race.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from torpor.metering.tables import GpuHourlyRow, UsageEventRow, UsageHourlyRow, WorkerSessionRow

if TYPE_CHECKING:
    from torpor.metering.meter import RequestUsage, WorkerSession

# The Core table: an executemany without the ORM's per-row bookkeeping.
EVENTS_TABLE = cast(Table, UsageEventRow.__table__)


def hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class GpuDelta:
    """GPU time accrued for one (hour, deployment, key); key "" is the deployment's own."""

    hour: datetime
    deployment: str
    key_id: str
    gpu_seconds: float = 0.0
    idle_gpu_seconds: float = 0.0
    startup_gpu_seconds: float = 0.0
    cold_start_gpu_seconds: float = 0.0
    cost_nusd: int = 0
    # Part of idle_gpu_seconds: the worker slept (billed at the sleeping rate).
    sleeping_gpu_seconds: float = 0.0


GPU_COUNTERS = (
    "gpu_seconds",
    "idle_gpu_seconds",
    "startup_gpu_seconds",
    "cold_start_gpu_seconds",
    "cost_nusd",
    "sleeping_gpu_seconds",
)


def event_values(e: RequestUsage) -> dict[str, Any]:
    return {
        "at": e.at,
        "deployment": e.deployment,
        "key_id": e.key_id,
        "session_id": e.session_id,
        "route": e.route,
        "status": e.status,
        "prompt_tokens": e.prompt_tokens,
        "completion_tokens": e.completion_tokens,
        "estimated": e.estimated,
        "ttft_ms": e.ttft_ms,
        "latency_ms": e.latency_ms,
        "queue_ms": e.queue_ms,
        "cold_start": e.cold_start,
        "stream": e.stream,
        "woke_worker": e.woke_worker,
        "wake_ms": e.wake_ms,
        "cost_nusd": e.cost_nusd,
    }


def session_row(ws: WorkerSession) -> WorkerSessionRow:
    return WorkerSessionRow(
        worker_id=ws.worker_id,
        deployment=ws.deployment,
        gpu_kind=ws.gpu_kind,
        gpu_count=ws.gpu_count,
        hourly_rate=ws.hourly_rate,
        started_at=ws.started_at,
        ready_at=ws.ready_at,
        stopped_at=ws.stopped_at,
        startup_s=ws.startup_s,
        sleeping_seconds=ws.sleeping_s,
        reason=ws.reason,
        heartbeat_at=ws.accrued_to,
    )


def rollup_groups(events: list[RequestUsage]) -> dict[tuple[datetime, str, str], dict[str, Any]]:
    """Hourly counters per (hour, deployment, key). A request without a first byte counts
    its latency as its time to first token, so both averages cover the same requests."""
    groups: dict[tuple[datetime, str, str], dict[str, Any]] = {}
    for e in events:
        g = groups.setdefault(
            (hour_of(e.at), e.deployment, e.key_id),
            {
                "requests": 0,
                "errors": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "latency_ms_sum": 0.0,
                "ttft_ms_sum": 0.0,
                "ttft_count": 0,
                "cold_starts": 0,
                "cost_nusd": 0,
            },
        )
        g["requests"] += 1
        g["errors"] += 1 if e.status >= 400 else 0
        g["prompt_tokens"] += e.prompt_tokens
        g["completion_tokens"] += e.completion_tokens
        g["latency_ms_sum"] += e.latency_ms
        g["ttft_ms_sum"] += e.ttft_ms if e.ttft_ms is not None else e.latency_ms
        g["ttft_count"] += 1
        g["cold_starts"] += 1 if e.cold_start else 0
        g["cost_nusd"] += e.cost_nusd
    return groups


async def add_rollups(s: AsyncSession, events: list[RequestUsage]) -> None:
    for (hour, dep, key_id), values in rollup_groups(events).items():
        await upsert_add(
            s, UsageHourlyRow, {"hour": hour, "deployment": dep, "key_id": key_id}, values
        )


def gpu_groups(deltas: list[GpuDelta]) -> dict[tuple[datetime, str, str], dict[str, Any]]:
    groups: dict[tuple[datetime, str, str], dict[str, Any]] = {}
    for d in deltas:
        g = groups.setdefault((d.hour, d.deployment, d.key_id), dict.fromkeys(GPU_COUNTERS, 0))
        for name in GPU_COUNTERS:
            g[name] += getattr(d, name)
    return groups


async def add_gpu(s: AsyncSession, deltas: list[GpuDelta]) -> None:
    for (hour, dep, key_id), values in gpu_groups(deltas).items():
        await upsert_add(
            s, GpuHourlyRow, {"hour": hour, "deployment": dep, "key_id": key_id}, values
        )


async def upsert_add(
    s: AsyncSession,
    model: Any,
    keys: dict[str, Any],
    add: dict[str, Any],
    replace: dict[str, Any] | None = None,
) -> None:
    """INSERT the row, or add `add` to the existing counters (one statement, no race)."""
    table = model.__table__
    dialect = s.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).values(**keys, **add, **(replace or {}))
    update = {name: table.c[name] + stmt.excluded[name] for name in add}
    update.update({name: stmt.excluded[name] for name in replace or {}})
    await s.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=update))


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
