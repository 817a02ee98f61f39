"""Async requests and per-key webhook secrets.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "async_requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False, index=True),
        sa.Column("deployment", sa.String(63), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("session_id", sa.String(256), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("not_before", TZ, nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("started_at", TZ, nullable=True),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("response_type", sa.String(200), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_state", sa.String(16), nullable=True),
        sa.Column("webhook_attempts", sa.Integer(), nullable=False),
        sa.Column("webhook_next_at", TZ, nullable=True),
        sa.Column("webhook_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_async_requests_status_created", "async_requests", ["status", "created_at"])
    op.create_index(
        "ix_async_requests_deployment_status", "async_requests", ["deployment", "status"]
    )
    op.create_index(
        "ix_async_requests_webhook", "async_requests", ["webhook_state", "webhook_next_at"]
    )
    op.create_table(
        "webhook_secrets",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("webhook_secrets")
    op.drop_index("ix_async_requests_webhook", "async_requests")
    op.drop_index("ix_async_requests_deployment_status", "async_requests")
    op.drop_index("ix_async_requests_status_created", "async_requests")
    op.drop_table("async_requests")
