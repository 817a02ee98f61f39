"""Tables of async requests and per-key webhook secrets (migration 0002 creates them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from torpor.store.tables import Base


class AsyncRequestRow(Base):
    """One accepted request: committed before the client hears 202, so it survives a crash."""

    __tablename__ = "async_requests"
    __table_args__ = (
        Index("ix_async_requests_status_created", "status", "created_at"),
        Index("ix_async_requests_deployment_status", "deployment", "status"),
        Index("ix_async_requests_webhook", "webhook_state", "webhook_next_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    deployment: Mapped[str] = mapped_column(String(63))
    method: Mapped[str] = mapped_column(String(16))
    # Engine path with query string, starting with "/".
    path: Mapped[str] = mapped_column(Text)
    headers: Mapped[dict[str, str]] = mapped_column(JSON)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    session_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    # Runs started (restarts included), and admission refusals retried so far.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    response_type: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The inner object of the OpenAI error envelope: {"message", "type", "code", "param"}.
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    # None (no webhook), pending, delivered, failed.
    webhook_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    webhook_next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    webhook_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class WebhookSecretRow(Base):
    """The HMAC secret that signs the webhooks of one API key; created on first use."""

    __tablename__ = "webhook_secrets"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
