"""Shared fixtures: a real `torpor serve` process on a free loopback port, its admin key,
the official openai SDK as client, and specs for fake-engine and llama.cpp deployments."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.pg_fixture import postgres_server, postgres_url
from tests.ray_fixture import ray_cluster

__all__ = ["postgres_server", "postgres_url", "ray_cluster"]

ADMIN_KEY = "tp-test-admin-key-0123456789abcdef"
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TorporServer:
    """`torpor serve` as a child process; stop() checks that no worker outlives it."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = ADMIN_KEY
        self.env = {
            **os.environ,
            "TORPOR_ADMIN_KEY": ADMIN_KEY,
            "TORPOR_DATA_DIR": str(data_dir),
            "TORPOR_KEEPALIVE_INTERVAL_S": "0.3",
            "TORPOR_RESTART_BACKOFF_BASE_S": "0.2",
            "TORPOR_RESTART_BACKOFF_MAX_S": "1",
            "TORPOR_WORKER_STOP_GRACE_S": "3",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "serve.log"
        self.children: set[int] = set()

    def start(self, timeout: float = 30) -> TorporServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torpor", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"torpor serve exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"torpor serve not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> set[int]:
        assert self.proc is not None
        try:
            return {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.proc is not None
        children = self.worker_pids()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.children = children
        return code

    def survivors(self, within: float = 5.0) -> list[int]:
        """Workers of this server still alive after `within` seconds."""
        deadline = time.monotonic() + within
        alive = list(self.children)
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _alive(p)]
            time.sleep(0.05)
        return alive

    # -- API helpers --------------------------------------------------------------------

    def api(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key or self.admin_key}"},
            timeout=60,
        )

    def openai(self, key: str | None = None, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key=key or self.admin_key, max_retries=0, **kw
        )

    def deploy(self, spec: dict[str, Any]) -> dict[str, Any]:
        with self.api() as c:
            r = c.post("/api/deployments", json=spec)
            assert r.status_code == 201, r.text
            return dict(r.json())

    def get(self, name: str) -> dict[str, Any]:
        with self.api() as c:
            r = c.get(f"/api/deployments/{name}")
            assert r.status_code == 200, r.text
            return dict(r.json())

    def patch(self, name: str, change: dict[str, Any]) -> dict[str, Any]:
        with self.api() as c:
            r = c.patch(f"/api/deployments/{name}", json=change)
            assert r.status_code == 200, r.text
            return dict(r.json())

    def wait_for(
        self, name: str, check: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        dep = self.get(name)
        while not check(dep):
            if time.monotonic() > deadline:
                raise AssertionError(f"deployment {name} never matched; last view: {dep}")
            time.sleep(0.05)
            dep = self.get(name)
        return dep


def _alive(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., TorporServer]]:
    """Start torpor servers; every one is stopped at the end and must leave no worker."""
    started: list[TorporServer] = []

    def make(data_dir: Path | None = None, env: dict[str, str] | None = None) -> TorporServer:
        srv = TorporServer(data_dir or tmp_path / f"data{len(started)}", env).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()
            assert srv.survivors() == [], f"workers outlived torpor: {srv.survivors()}"


@pytest.fixture
def server(server_factory: Callable[..., TorporServer]) -> TorporServer:
    return server_factory()


def fake_spec(name: str, *, engine_args: str = "", **fields: Any) -> dict[str, Any]:
    """A deployment of the fake OpenAI engine, run by the `custom` framework."""
    command = f"{sys.executable} -m torpor.testing.fake_engine --port {{port}} {engine_args}"
    spec: dict[str, Any] = {
        "name": name,
        "framework": "custom",
        "options": {"command": command.strip(), "health_path": "/health"},
        "idle_timeout_s": 300,
    }
    spec.update(fields)
    return spec


def llama_spec(name: str, **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "framework": "llama.cpp",
        "model": "smollm2-135m-instruct",
        # Short context keeps the CPU engine's memory and start time small in tests.
        "framework_args": ["--n_ctx", "512"],
    }
    spec.update(fields)
    return spec
