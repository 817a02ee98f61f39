"""Metering: usage events, hourly rollups, worker sessions, storage; key budgets.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "usage_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", TZ, nullable=False, index=True),
        sa.Column("deployment", sa.String(63), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False, index=True),
        sa.Column("session_id", sa.String(200), nullable=True),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("queue_ms", sa.Float(), nullable=False),
        sa.Column("cold_start", sa.Boolean(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
    )
    op.create_index("ix_usage_events_dep_at", "usage_events", ["deployment", "at"])
    op.create_table(
        "usage_hourly",
        sa.Column("hour", TZ, primary_key=True),
        sa.Column("deployment", sa.String(63), primary_key=True),
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False),
        sa.Column("ttft_ms_sum", sa.Float(), nullable=False),
        sa.Column("ttft_count", sa.Integer(), nullable=False),
        sa.Column("cold_starts", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
    )
    op.create_table(
        "worker_sessions",
        sa.Column("worker_id", sa.String(96), primary_key=True),
        sa.Column("deployment", sa.String(63), nullable=False, index=True),
        sa.Column("gpu_kind", sa.String(64), nullable=False),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("hourly_rate", sa.Float(), nullable=False),
        sa.Column("started_at", TZ, nullable=False, index=True),
        sa.Column("ready_at", TZ, nullable=True),
        sa.Column("stopped_at", TZ, nullable=True),
        sa.Column("startup_s", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    op.create_table(
        "storage_hourly",
        sa.Column("hour", TZ, primary_key=True),
        sa.Column("deployment", sa.String(63), primary_key=True),
        sa.Column("gb_seconds", sa.Float(), nullable=False),
        sa.Column("last_gb", sa.Float(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("budget_usd_monthly", sa.Float(), nullable=True))
        batch.add_column(sa.Column("budget_tokens_monthly", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("plan_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("plan_tokens")
        batch.drop_column("budget_tokens_monthly")
        batch.drop_column("budget_usd_monthly")
    for table in ("storage_hourly", "worker_sessions", "usage_hourly", "usage_events"):
        op.drop_table(table)
