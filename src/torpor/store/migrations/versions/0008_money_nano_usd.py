"""Money as integers: the costs of usage events, hourly usage rollups and storage hours are
stored in nano-dollars (BIGINT `cost_nusd`, as gpu_hourly already is) instead of floats.
Existing rows are converted (rounded to the nano-dollar).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("usage_events", "usage_hourly", "storage_hourly")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("cost_nusd", sa.BigInteger(), nullable=False, server_default="0")
            )
        op.execute(f"UPDATE {table} SET cost_nusd = CAST(ROUND(cost * 1000000000) AS BIGINT)")
        with op.batch_alter_table(table) as batch:
            batch.drop_column("cost")
            batch.alter_column("cost_nusd", server_default=None)


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("cost", sa.Float(), nullable=False, server_default="0"))
        op.execute(f"UPDATE {table} SET cost = cost_nusd / 1000000000.0")
        with op.batch_alter_table(table) as batch:
            batch.drop_column("cost_nusd")
            batch.alter_column("cost", server_default=None)
