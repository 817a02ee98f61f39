"""Sleep and wake in metering: a worker session's sleeping seconds, the sleeping GPU time of
each hourly GPU row (part of its idle time, billed at the sleeping rate), and whether a
request woke a worker and how long the wake took.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("worker_sessions") as batch:
        batch.add_column(
            sa.Column("sleeping_seconds", sa.Float(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("gpu_hourly") as batch:
        batch.add_column(
            sa.Column("sleeping_gpu_seconds", sa.Float(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("usage_events") as batch:
        batch.add_column(
            sa.Column("woke_worker", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("wake_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("wake_ms")
        batch.drop_column("woke_worker")
    with op.batch_alter_table("gpu_hourly") as batch:
        batch.drop_column("sleeping_gpu_seconds")
    with op.batch_alter_table("worker_sessions") as batch:
        batch.drop_column("sleeping_seconds")
