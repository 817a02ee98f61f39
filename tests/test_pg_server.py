"""The test session's PostgreSQL server really runs and serves SQLAlchemy async connections."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.pg_fixture import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]

pytestmark = pytest.mark.postgres


async def test_postgres_round_trip(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+asyncpg://torpor@127.0.0.1:")
    engine = create_async_engine(postgres_url)
    try:
        async with engine.begin() as conn:
            assert (await conn.execute(text("select 1"))).scalar_one() == 1
            await conn.execute(text("create table items (id serial primary key, name text)"))
            await conn.execute(
                text("insert into items (name) values (:a), (:b)"), {"a": "one", "b": "two"}
            )
        async with engine.connect() as conn:
            rows = (await conn.execute(text("select name from items order by id"))).all()
            assert [row.name for row in rows] == ["one", "two"]
    finally:
        await engine.dispose()
