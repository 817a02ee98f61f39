"""Metering tables: raw request events, hourly rollups, worker sessions, GPU time per key,
storage time."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from torpor.store.tables import Base


class UsageEventRow(Base):
    """One request, written in batches off the request path."""

    __tablename__ = "usage_events"
    __table_args__ = (Index("ix_usage_events_dep_at", "deployment", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    deployment: Mapped[str] = mapped_column(String(63))
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    session_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    route: Mapped[str] = mapped_column(String(200))
    status: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    # True when the engine gave no usage and torpor counted the streamed chunks instead.
    estimated: Mapped[bool] = mapped_column(Boolean)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    queue_ms: Mapped[float] = mapped_column(Float)
    cold_start: Mapped[bool] = mapped_column(Boolean)
    stream: Mapped[bool] = mapped_column(Boolean)
    # It waited for a sleeping worker to wake, and how long that wake took (migration 0009).
    woke_worker: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    wake_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Money in integer nano-dollars (migration 0008).
    cost_nusd: Mapped[int] = mapped_column(BigInteger)


class UsageHourlyRow(Base):
    """Requests rolled up per hour, deployment and key: what the dashboards read."""

    __tablename__ = "usage_hourly"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    deployment: Mapped[str] = mapped_column(String(63), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms_sum: Mapped[float] = mapped_column(Float)
    ttft_ms_sum: Mapped[float] = mapped_column(Float)
    ttft_count: Mapped[int] = mapped_column(Integer)
    cold_starts: Mapped[int] = mapped_column(Integer)
    cost_nusd: Mapped[int] = mapped_column(BigInteger)


class WorkerSessionRow(Base):
    """A worker's life for billing: GPU seconds run from start to stop."""

    __tablename__ = "worker_sessions"

    worker_id: Mapped[str] = mapped_column(String(96), primary_key=True)
    deployment: Mapped[str] = mapped_column(String(63), index=True)
    gpu_kind: Mapped[str] = mapped_column(String(64))
    gpu_count: Mapped[int] = mapped_column(Integer)
    hourly_rate: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    startup_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Seconds it slept (billed at the sleeping rate; migration 0009).
    sleeping_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # Written with each accrual of its GPU time: after a crash the session ends here.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class StorageHourlyRow(Base):
    """GB-seconds of a deployment's storage, per hour."""

    __tablename__ = "storage_hourly"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    deployment: Mapped[str] = mapped_column(String(63), primary_key=True)
    gb_seconds: Mapped[float] = mapped_column(Float)
    last_gb: Mapped[float] = mapped_column(Float)
    cost_nusd: Mapped[int] = mapped_column(BigInteger)


class GpuHourlyRow(Base):
    """Worker GPU time accrued per hour, deployment and key: a key's row holds the busy time
    attributed to it (and the start-up it caused, as a report); the deployment's own row
    (key_id "") holds idle (sleeping included, also counted apart in sleeping_gpu_seconds)
    and start-up time. All rows of a deployment sum to its workers'
    billed time. Cost in integer nano-dollars."""

    __tablename__ = "gpu_hourly"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    deployment: Mapped[str] = mapped_column(String(63), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    gpu_seconds: Mapped[float] = mapped_column(Float)
    idle_gpu_seconds: Mapped[float] = mapped_column(Float)
    startup_gpu_seconds: Mapped[float] = mapped_column(Float)
    cold_start_gpu_seconds: Mapped[float] = mapped_column(Float)
    sleeping_gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    cost_nusd: Mapped[int] = mapped_column(BigInteger)
