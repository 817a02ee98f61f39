"""The store: one async engine, migrations at open, small typed methods per table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from alembic import command
from alembic.config import Config
from sqlalchemy import delete, event, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from torpor.store.tables import ApiKeyRow, DeploymentRow, EventRow, WorkerRow

_MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the writer; busy_timeout rides out short write locks.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _run_migrations(conn: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


class Store:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def migrate(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(_run_migrations)

    async def close(self) -> None:
        await self.engine.dispose()

    # -- deployments ----------------------------------------------------------------------

    async def list_deployments(self) -> Sequence[DeploymentRow]:
        async with self._session() as s:
            return (await s.scalars(select(DeploymentRow))).all()

    async def save_deployment(self, row: DeploymentRow) -> None:
        async with self._session.begin() as s:
            await s.merge(row)

    async def delete_deployment(self, name: str) -> None:
        async with self._session.begin() as s:
            await s.execute(delete(WorkerRow).where(WorkerRow.deployment == name))
            await s.execute(delete(EventRow).where(EventRow.deployment == name))
            await s.execute(delete(DeploymentRow).where(DeploymentRow.name == name))

    async def count_deployments(self) -> int:
        return len(await self.list_deployments())

    # -- workers --------------------------------------------------------------------------

    async def save_workers(self, rows: Sequence[WorkerRow]) -> None:
        if not rows:
            return
        async with self._session.begin() as s:
            for row in rows:
                await s.merge(row)

    async def live_workers(self) -> Sequence[WorkerRow]:
        """Workers that were not known to be stopped: candidates for orphan clean-up."""
        async with self._session() as s:
            q = select(WorkerRow).where(WorkerRow.state.not_in(("stopped", "failed")))
            return (await s.scalars(q)).all()

    async def recent_workers(self, deployment: str, limit: int) -> Sequence[WorkerRow]:
        async with self._session() as s:
            q = (
                select(WorkerRow)
                .where(WorkerRow.deployment == deployment)
                .order_by(WorkerRow.started_at.desc())
                .limit(limit)
            )
            return (await s.scalars(q)).all()

    # -- events ---------------------------------------------------------------------------

    async def add_events(self, events: Sequence[dict[str, Any]]) -> None:
        """Many events in one statement (the controller writes a cycle's events at once)."""
        async with self._session.begin() as s:
            await s.execute(insert(EventRow), list(events))

    async def list_events(self, deployment: str, limit: int = 500) -> Sequence[EventRow]:
        async with self._session() as s:
            q = (
                select(EventRow)
                .where(EventRow.deployment == deployment)
                .order_by(EventRow.id.desc())
                .limit(limit)
            )
            return list(reversed((await s.scalars(q)).all()))

    # -- api keys -------------------------------------------------------------------------

    async def add_key(self, row: ApiKeyRow) -> None:
        async with self._session.begin() as s:
            s.add(row)

    async def list_keys(self) -> Sequence[ApiKeyRow]:
        async with self._session() as s:
            return (await s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))).all()

    async def key_by_hash(self, key_hash: str) -> ApiKeyRow | None:
        """The key with this hash, revoked or not."""
        async with self._session() as s:
            return (
                await s.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash))
            ).first()

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> ApiKeyRow | None:
        async with self._session.begin() as s:
            row = await s.get(ApiKeyRow, key_id)
            if row is None:
                return None
            for name, value in changes.items():
                setattr(row, name, value)
            return row

    async def revoke_key(self, key_id: str, at: datetime) -> bool:
        async with self._session.begin() as s:
            result = await s.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            return bool(getattr(result, "rowcount", 0))


async def open_store(url: str) -> Store:
    """Create the engine, apply migrations and return the store."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    store = Store(engine)
    await store.migrate()
    return store
