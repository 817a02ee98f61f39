"""Metering: GPU time accrued per hour, deployment and key (chargeback), a heartbeat of
open worker sessions, and per-key caps on attributed GPU cost.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gpu_hourly",
        sa.Column("hour", TZ, primary_key=True),
        sa.Column("deployment", sa.String(63), primary_key=True),
        # "" for the deployment's own time (idle and start-up), else the key it served.
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.Column("idle_gpu_seconds", sa.Float(), nullable=False),
        sa.Column("startup_gpu_seconds", sa.Float(), nullable=False),
        sa.Column("cold_start_gpu_seconds", sa.Float(), nullable=False),
        sa.Column("cost_nusd", sa.BigInteger(), nullable=False),
    )
    with op.batch_alter_table("worker_sessions") as batch:
        batch.add_column(sa.Column("heartbeat_at", TZ, nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("budget_gpu_usd_monthly", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("budget_gpu_usd_monthly")
    with op.batch_alter_table("worker_sessions") as batch:
        batch.drop_column("heartbeat_at")
    op.drop_table("gpu_hourly")
