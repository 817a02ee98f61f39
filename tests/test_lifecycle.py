"""Worker processes never outlive torpor: clean shutdown, SIGKILL of torpor itself, and
orphans from an earlier crash found and stopped at the next start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.conftest import TorporServer, fake_spec
from torpor.store import open_store
from torpor.store.db import utcnow
from torpor.store.tables import WorkerRow


def _running(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_clean_shutdown_stops_workers(server_factory: Callable[..., TorporServer]) -> None:
    srv = server_factory()
    srv.deploy(fake_spec("w", min_workers=2, max_workers=2))
    dep = srv.wait_for("w", lambda d: d["ready_workers"] == 2)
    pids = [w["pid"] for w in dep["workers"]]
    # uvicorn re-raises the signal after its shutdown completes.
    assert srv.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in srv.log()
    assert srv.survivors() == []
    assert _running(pids) == []


def test_sigkill_of_torpor_takes_workers_down_and_restart_recovers(
    server_factory: Callable[..., TorporServer],
) -> None:
    srv = server_factory()
    srv.deploy(fake_spec("w", min_workers=1))
    dep = srv.wait_for("w", lambda d: d["status"] == "ready")
    pid = dep["workers"][0]["pid"]
    srv.stop(signal.SIGKILL)
    assert srv.survivors() == []
    assert _running([pid]) == []

    again = server_factory(data_dir=srv.data_dir)
    dep = again.wait_for("w", lambda d: d["status"] == "ready")
    old = [w for w in dep["workers"] if w["pid"] == pid]
    assert old == []  # a fresh worker, the old one is history
    assert dep["workers"][0]["state"] == "healthy"


def test_orphan_from_a_crash_is_stopped_at_next_start(
    server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = server_factory(data_dir=data)
    first.stop()

    # A worker process that survived a crash (started outside torpor, so no parent-death
    # signal), still recorded as healthy in the store.
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env={**os.environ, "TORPOR_WORKER_ID": "w-orphan1"},
        start_new_session=True,
    )
    try:

        async def record() -> None:
            store = await open_store(f"sqlite+aiosqlite:///{data / 'torpor.db'}")
            await store.save_workers(
                [
                    WorkerRow(
                        id="w-orphan1",
                        deployment="smollm2",
                        state="healthy",
                        spec_version=1,
                        pid=orphan.pid,
                        pid_create_time=psutil.Process(orphan.pid).create_time(),
                        port=1,
                        restarts=0,
                        log_path=str(data / "x.log"),
                        gpu_ids=[],
                        started_at=utcnow(),
                    )
                ]
            )
            await store.close()

        asyncio.run(record())
        srv = server_factory(data_dir=data)
        assert orphan.wait(timeout=10) is not None
        assert "stopping orphan worker w-orphan1" in srv.log()
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
