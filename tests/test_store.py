"""The store against both backends: SQLite (WAL, a temp file) and the session's PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from torpor.store import Store, open_store
from torpor.store.tables import ApiKeyRow, DeploymentRow, EventRow, WorkerRow

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 't.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    st = await open_store(db_url)
    try:
        yield st
    finally:
        await st.close()


def _aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes (written as UTC)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def deployment_row(name: str, **fields: object) -> DeploymentRow:
    values: dict[str, object] = {
        "name": name,
        "spec": {"name": name, "framework": "custom", "options": {"command": "x", "n": [1, 2]}},
        "spec_version": 1,
        "state": "running",
        "reason": None,
        "model_path": None,
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return DeploymentRow(**values)


def worker_row(wid: str, deployment: str, state: str, **fields: object) -> WorkerRow:
    values: dict[str, object] = {
        "id": wid,
        "deployment": deployment,
        "state": state,
        "spec_version": 1,
        "pid": 1234,
        "pid_create_time": 1.5,
        "port": 40000,
        "restarts": 0,
        "log_path": f"workers/{wid}.log",
        "gpu_ids": [],
        "started_at": T0,
    }
    values.update(fields)
    return WorkerRow(**values)


def key_row(kid: str, name: str, *, offset_s: int = 0, **fields: object) -> ApiKeyRow:
    values: dict[str, object] = {
        "id": kid,
        "name": name,
        "prefix": "tp-" + kid[-4:],
        "key_hash": ("h" + kid).ljust(64, "0"),
        "admin": False,
        "deployments": None,
        "created_at": T0 + timedelta(seconds=offset_s),
        "revoked_at": None,
    }
    values.update(fields)
    return ApiKeyRow(**values)


async def test_migrations_idempotent(db_url: str) -> None:
    first = await open_store(db_url)
    try:
        await first.save_deployment(deployment_row("keep"))
    finally:
        await first.close()
    second = await open_store(db_url)  # runs the migrations again: a no-op at head
    try:
        await second.migrate()
        async with second.engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        # One linear chain: exactly one row, at the newest revision of the scripts.
        assert [v[0] for v in versions] == [_script_head()]
        assert [d.name for d in await second.list_deployments()] == ["keep"]
    finally:
        await second.close()


async def test_dialect(store: Store, db_url: str) -> None:
    assert store.dialect == ("sqlite" if db_url.startswith("sqlite") else "postgresql")


async def test_sqlite_wal_mode(tmp_path: Path) -> None:
    """SQLite only: every connection runs in WAL mode with a busy timeout."""
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}")
    try:
        async with store.engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
            timeout = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one()
    finally:
        await store.close()
    assert str(mode).lower() == "wal"
    assert int(timeout) == 5000


async def test_deployment_round_trip(store: Store) -> None:
    assert await store.list_deployments() == []
    await store.save_deployment(deployment_row("alpha"))
    await store.save_deployment(
        deployment_row("beta", spec={"name": "beta", "env": {"A": "1"}, "args": ["--x", 2]})
    )
    rows = {d.name: d for d in await store.list_deployments()}
    assert set(rows) == {"alpha", "beta"}
    assert rows["alpha"].spec == {
        "name": "alpha",
        "framework": "custom",
        "options": {"command": "x", "n": [1, 2]},
    }
    assert rows["beta"].spec == {"name": "beta", "env": {"A": "1"}, "args": ["--x", 2]}
    assert rows["alpha"].state == "running"
    assert _aware(rows["alpha"].created_at) == T0
    assert await store.count_deployments() == 2

    # Saving again updates in place (merge on the primary key).
    later = T0 + timedelta(minutes=5)
    await store.save_deployment(
        deployment_row(
            "alpha",
            spec={"name": "alpha", "max_workers": 3},
            spec_version=2,
            state="failed",
            reason="boom",
            model_path="/models/m.gguf",
            updated_at=later,
        )
    )
    rows = {d.name: d for d in await store.list_deployments()}
    assert len(rows) == 2
    alpha = rows["alpha"]
    assert alpha.spec == {"name": "alpha", "max_workers": 3}
    assert (alpha.spec_version, alpha.state, alpha.reason) == (2, "failed", "boom")
    assert alpha.model_path == "/models/m.gguf"
    assert _aware(alpha.updated_at) == later


async def test_workers_upsert_and_live(store: Store) -> None:
    await store.save_workers([])  # no-op
    await store.save_workers(
        [
            worker_row("d-1", "d", "provisioning", gpu_ids=[0, 1]),
            worker_row("d-2", "d", "healthy"),
            worker_row("d-3", "d", "stopped"),
            worker_row("e-1", "e", "failed"),
            worker_row("e-2", "e", "sleeping"),
        ]
    )
    live = {w.id: w for w in await store.live_workers()}
    assert set(live) == {"d-1", "d-2", "e-2"}
    assert live["d-1"].gpu_ids == [0, 1]
    assert live["d-1"].pid == 1234
    assert live["d-1"].pid_create_time == pytest.approx(1.5)

    # Upsert: the same ids with new states replace the rows, no duplicates.
    await store.save_workers(
        [
            worker_row("d-1", "d", "healthy", restarts=2, ready_at=T0),
            worker_row("d-2", "d", "stopped", exit_code=0, stopped_at=T0, reason="scaled down"),
        ]
    )
    live = {w.id: w for w in await store.live_workers()}
    assert set(live) == {"d-1", "e-2"}
    assert live["d-1"].state == "healthy"
    assert live["d-1"].restarts == 2
    assert _aware(live["d-1"].ready_at) == T0

    recent = await store.recent_workers("d", 10)
    assert sorted(w.id for w in recent) == ["d-1", "d-2", "d-3"]
    stopped = next(w for w in recent if w.id == "d-2")
    assert (stopped.state, stopped.exit_code, stopped.reason) == ("stopped", 0, "scaled down")


async def test_recent_workers_newest_first(store: Store) -> None:
    await store.save_workers(
        [
            worker_row(f"d-{i}", "d", "stopped", started_at=T0 + timedelta(seconds=i))
            for i in range(5)
        ]
    )
    recent = await store.recent_workers("d", 3)
    assert [w.id for w in recent] == ["d-4", "d-3", "d-2"]


async def test_events_order(store: Store) -> None:
    for i, state in enumerate(["starting", "filesystem_created", "running"]):
        await add_event(store, "d", "setup", state, f"m{i}", T0 + timedelta(seconds=i))
    await add_event(store, "other", "setup", "running", "", T0)
    await add_event(store, "d", "worker", "healthy", "d-1 ready", T0 + timedelta(seconds=9))

    events = await store.list_events("d")
    assert [(e.kind, e.state, e.message) for e in events] == [
        ("setup", "starting", "m0"),
        ("setup", "filesystem_created", "m1"),
        ("setup", "running", "m2"),
        ("worker", "healthy", "d-1 ready"),
    ]
    assert _aware(events[0].at) == T0
    assert all(isinstance(e, EventRow) for e in events)
    # A limit keeps the newest events, still oldest first.
    last_two = await store.list_events("d", limit=2)
    assert [e.state for e in last_two] == ["running", "healthy"]
    assert await store.list_events("nobody") == []


async def test_keys_add_list_revoke(store: Store) -> None:
    await store.add_key(key_row("key_b", "second", offset_s=10, deployments=["a", "b"]))
    await store.add_key(key_row("key_a", "first", offset_s=0, admin=True))
    keys = await store.list_keys()
    assert [k.id for k in keys] == ["key_a", "key_b"]  # by created_at
    assert keys[0].admin is True
    assert keys[0].deployments is None
    assert keys[1].deployments == ["a", "b"]
    assert all(k.revoked_at is None for k in keys)

    when = T0 + timedelta(hours=1)
    assert await store.revoke_key("key_b", when) is True
    assert await store.revoke_key("key_b", when + timedelta(hours=1)) is False
    assert await store.revoke_key("key_missing", when) is False
    by_id = {k.id: k for k in await store.list_keys()}
    assert _aware(by_id["key_b"].revoked_at) == when  # the first revocation time is kept
    assert by_id["key_a"].revoked_at is None


async def test_key_hash_unique(store: Store) -> None:
    await store.add_key(key_row("key_1", "one"))
    with pytest.raises(IntegrityError, match=r"(?i)unique|duplicate"):
        await store.add_key(key_row("key_2", "two", key_hash=("hkey_1").ljust(64, "0")))
    assert [k.id for k in await store.list_keys()] == ["key_1"]


async def test_delete_deployment_cascades(store: Store) -> None:
    for name in ("gone", "kept"):
        await store.save_deployment(deployment_row(name))
        await store.save_workers(
            [worker_row(f"{name}-1", name, "healthy"), worker_row(f"{name}-2", name, "stopped")]
        )
        await add_event(store, name, "setup", "running", "", T0)

    await store.delete_deployment("gone")

    assert [d.name for d in await store.list_deployments()] == ["kept"]
    assert [w.id for w in await store.live_workers()] == ["kept-1"]
    assert await store.recent_workers("gone", 10) == []
    assert len(await store.recent_workers("kept", 10)) == 2
    assert await store.list_events("gone") == []
    assert len(await store.list_events("kept")) == 1
    await store.delete_deployment("never-existed")  # no error


def _script_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import torpor.store.db as db

    cfg = Config()
    cfg.set_main_option("script_location", str(db._MIGRATIONS))
    heads = ScriptDirectory.from_config(cfg).get_heads()
    assert len(heads) == 1, f"migrations must form one chain, found heads {heads}"
    return str(heads[0])


async def add_event(
    store: Store, deployment: str, kind: str, state: str, message: str, at: datetime
) -> None:
    await store.add_events(
        [{"deployment": deployment, "kind": kind, "state": state, "message": message, "at": at}]
    )
