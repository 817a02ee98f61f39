"""`torpor serve` on PostgreSQL (and on the default SQLite): serve a fake-engine deployment,
then restart on the same database and check that deployments and API keys survived."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import TorporServer, fake_spec
from torpor.store import open_store

NAME = "pg-fake"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Extra server env for the backend: none for SQLite, TORPOR_DATABASE_URL for PostgreSQL."""
    if request.param == "sqlite":
        return {}
    return {"TORPOR_DATABASE_URL": str(request.getfixturevalue("postgres_url"))}


def _ready(dep: dict[str, Any]) -> bool:
    return bool(dep["status"] == "ready")


def _chat(server: TorporServer, key: str | None = None) -> str:
    with server.openai(key) as client:
        resp = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hello"}]
        )
    assert resp.model
    content = resp.choices[0].message.content
    assert content is not None
    return content


async def _stored(url: str) -> tuple[list[str], list[str], list[str]]:
    """Deployment names, key names and live worker ids as the database holds them."""
    store = await open_store(url)
    try:
        deps = sorted(d.name for d in await store.list_deployments())
        keys = sorted(k.name for k in await store.list_keys())
        live = sorted(w.id for w in await store.live_workers())
        return deps, keys, live
    finally:
        await store.close()


def test_restart_keeps_deployments_and_keys(
    backend_env: dict[str, str], server_factory: Callable[..., TorporServer]
) -> None:
    # backend_env comes first: its database must outlive the servers (teardown is LIFO).
    server = server_factory(env=backend_env)
    dep = server.deploy(fake_spec(NAME, min_workers=1))
    assert dep["name"] == NAME
    assert dep["min_workers"] == 1
    dep = server.wait_for(NAME, _ready, timeout=30)
    assert dep["state"] == "running"
    assert dep["ready_workers"] == 1

    assert _chat(server).startswith("tok0 tok1")

    with server.api() as api:
        r = api.post("/api/keys", json={"name": "survivor"})
        assert r.status_code == 201, r.text
        created = r.json()
    secret = created["key"]
    assert secret.startswith("tp-")
    assert created["admin"] is False
    # The new (non-admin, all-deployments) key can call the deployment already.
    assert _chat(server, secret).startswith("tok0")

    old_worker_ids = {w["id"] for w in dep["workers"]}
    # uvicorn re-raises the SIGTERM it handled after a graceful shutdown.
    assert server.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log()
    assert server.survivors() == [], "workers outlived torpor"

    # The state really lives in the configured database, and no worker is left marked live.
    db_file = server.data_dir / "torpor.db"
    if "TORPOR_DATABASE_URL" in backend_env:
        assert not db_file.exists(), "PostgreSQL mode must not create the SQLite file"
        url = backend_env["TORPOR_DATABASE_URL"]
    else:
        assert db_file.exists()
        url = f"sqlite+aiosqlite:///{db_file}"
    deps, key_names, live = asyncio.run(_stored(url))
    assert NAME in deps
    assert "survivor" in key_names
    assert live == []

    again = server_factory(data_dir=server.data_dir, env=backend_env)
    with again.api(secret) as api:
        r = api.get("/api/deployments")
        assert r.status_code == 200, r.text
        names = [d["name"] for d in r.json()["data"]]
    assert NAME in names
    # The default deployment was created once, on the fresh data dir, not again.
    assert names.count("smollm2") == 1

    with again.api() as api:
        listed = api.get("/api/keys").json()["data"]
    survivor = [k for k in listed if k["name"] == "survivor"]
    assert len(survivor) == 1
    assert survivor[0]["id"] == created["id"]
    assert survivor[0]["revoked_at"] is None
    # The bootstrap admin key was registered once, not once per start.
    assert sum(1 for k in listed if k["admin"]) == 1

    dep = again.wait_for(NAME, _ready, timeout=30)
    assert dep["min_workers"] == 1
    assert dep["spec_version"] == 1
    assert dep["options"]["health_path"] == "/health"
    new_ids = {w["id"] for w in dep["workers"] if w["state"] == "healthy"}
    assert new_ids and not new_ids & old_worker_ids, "a fresh worker serves after the restart"
    assert _chat(again, secret).startswith("tok0 tok1")

    assert again.stop() in (0, -signal.SIGTERM)
    assert again.survivors() == []
    log = again.log()
    assert "Application shutdown complete" in log
    assert "Traceback" not in log, log
