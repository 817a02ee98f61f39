"""The data dir is private: 0700, its database and key files 0600 from the start, and a
warning for a data dir other users may enter (issue 10, finding 8)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import TorporServer, fake_spec
from torpor.datadir import looser_than, prepare_data_dir, sqlite_path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wanted", "looser"),
    [
        (0o700, 0o700, False),
        (0o500, 0o700, False),
        (0o755, 0o700, True),
        (0o710, 0o700, True),
        (0o600, 0o600, False),
        (0o400, 0o600, False),
        (0o644, 0o600, True),
        (0o700, 0o600, True),  # executable is a bit the file must not have
        (stat.S_IFREG | 0o600, 0o600, False),  # the file type bits are ignored
    ],
)
def test_looser_than(value: int, wanted: int, looser: bool) -> None:
    assert looser_than(value, wanted) is looser


def test_sqlite_path() -> None:
    assert sqlite_path("sqlite+aiosqlite:////var/lib/torpor/torpor.db") == Path(
        "/var/lib/torpor/torpor.db"
    )
    assert sqlite_path("sqlite:///relative.db") == Path("relative.db")
    assert sqlite_path("sqlite+aiosqlite://") is None
    assert sqlite_path("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_path("postgresql+asyncpg://u:p@127.0.0.1:5432/torpor") is None


# -- prepare_data_dir on the real filesystem -------------------------------------------------


def test_a_new_data_dir_is_created_private(tmp_path: Path) -> None:
    data = tmp_path / "a" / "data"
    db = data / "torpor.db"
    assert prepare_data_dir(data, sqlite_url(db)) == []
    assert mode(data) == 0o700
    assert mode(data / "deployments") == 0o700
    assert db.is_file() and db.stat().st_size == 0
    assert mode(db) == 0o600


def test_an_existing_database_is_never_truncated(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    db = data / "torpor.db"
    db.write_bytes(b"SQLite format 3\x00 and more")
    os.chmod(db, 0o600)
    assert prepare_data_dir(data, sqlite_url(db)) == []
    assert db.read_bytes() == b"SQLite format 3\x00 and more"


def test_an_open_data_dir_is_reported_not_changed(tmp_path: Path) -> None:
    data = tmp_path / "shared"
    data.mkdir()
    os.chmod(data, 0o755)
    warnings = prepare_data_dir(data, sqlite_url(data / "torpor.db"))
    assert len(warnings) == 1
    assert str(data) in warnings[0] and "0755" in warnings[0]
    assert mode(data) == 0o755  # the operator's directory keeps its mode


def test_torpors_own_open_files_are_tightened_and_reported(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    db = data / "torpor.db"
    files = [db, data / "torpor.db-wal", data / "torpor.db-shm", data / "admin.key"]
    for f in files:
        f.write_bytes(b"")
        os.chmod(f, 0o644)
    (data / "deployments").mkdir()
    os.chmod(data / "deployments", 0o755)
    warnings = prepare_data_dir(data, sqlite_url(db))
    expected = {**{f: "0644" for f in files}, data / "deployments": "0755"}
    for path, was in expected.items():
        assert any(f"{path} had mode {was}" in w for w in warnings), (path, warnings)
    assert len(warnings) == 5
    assert [mode(f) for f in files] == [0o600] * 4
    assert mode(data / "deployments") == 0o700


def test_postgres_needs_no_database_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert prepare_data_dir(data, "postgresql+asyncpg://u:p@127.0.0.1:1/x") == []
    assert sorted(p.name for p in data.iterdir()) == ["deployments"]


# -- a real `torpor serve` -------------------------------------------------------------------


def wait_for_file(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_serve_makes_a_fresh_data_dir_private(
    server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    data = tmp_path / "fresh" / "data"  # torpor creates it (the fixture's dir holds the log)
    server = server_factory(env={"TORPOR_ADMIN_KEY": "", "TORPOR_DATA_DIR": str(data)})
    key_file = data / "admin.key"
    secret = key_file.read_text().strip()
    with server.api(secret) as api:
        # A write, so that SQLite's WAL and shared-memory files exist.
        assert api.post("/api/keys", json={"name": "writer"}).status_code == 201
        r = api.post("/api/deployments", json=fake_spec("fake", min_workers=1))
        assert r.status_code == 201, r.text
    db = data / "torpor.db"
    assert mode(data) == 0o700
    for path in (db, data / "torpor.db-wal", data / "torpor.db-shm", key_file):
        assert mode(path) == 0o600, f"{path} is {mode(path):04o}"
    assert "has mode" not in server.log()

    # A worker's log (it may hold prompts) lies under deployments/, which is 0700.
    server.admin_key = secret
    server.wait_for("fake", lambda d: any(w["state"] == "healthy" for w in d["workers"]))
    logs = list((data / "deployments").rglob("*.log"))
    assert logs, "no worker log was written"
    assert mode(data / "deployments") == 0o700
    assert all(data / "deployments" in log.parents for log in logs)


def test_serve_warns_about_an_open_data_dir(
    server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    data = tmp_path / "open"
    data.mkdir()
    os.chmod(data, 0o755)
    server = server_factory(env={"TORPOR_DATA_DIR": str(data)})
    assert f"data dir {data} has mode 0755" in server.log()
    assert mode(data) == 0o755
    assert mode(data / "torpor.db") == 0o600

    # A database left readable (an older torpor, a restored backup) is made private again.
    server.stop()
    os.chmod(data / "torpor.db", 0o644)
    again = server_factory(env={"TORPOR_DATA_DIR": str(data)})
    assert f"{data / 'torpor.db'} had mode 0644" in again.log()
    assert mode(data / "torpor.db") == 0o600
