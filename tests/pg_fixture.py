"""Pytest fixtures for the session's PostgreSQL server.

Import them into ``conftest.py``: ``from tests.pg_fixture import postgres_server, postgres_url``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.pg_server import PostgresServer

__all__ = ["postgres_server", "postgres_url"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server started once for the test session (fails if PostgreSQL is missing)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, uniquely named database: its ``postgresql+asyncpg://`` URL. Dropped afterwards."""
    name = f"torpor_test_{uuid.uuid4().hex[:16]}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)
