"""API keys: the stored prefix is at most 8 characters (it was 10).

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A listed prefix identifies a key; more of it only helps someone guessing the rest.
    op.execute("UPDATE api_keys SET prefix = substr(prefix, 1, 8) WHERE length(prefix) > 8")


def downgrade() -> None:
    pass  # the dropped characters are gone
