"""Persistence: SQLAlchemy 2 async over SQLite (default) or PostgreSQL, Alembic migrations."""

from torpor.store.db import Store, open_store

__all__ = ["Store", "open_store"]
