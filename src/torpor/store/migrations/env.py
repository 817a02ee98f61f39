"""Alembic environment: migrations run on the connection torpor hands over at start."""

from __future__ import annotations

from alembic import context

from torpor.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("torpor runs its migrations itself at start (torpor serve)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
