"""Shared harness: real processes on free loopback ports (torpor serve, the fake engine,
llama.cpp's server), readiness polling, process memory, and the facts of this machine.

Every process started here runs in its own session and is stopped by `Processes.close()`
(SIGTERM, grace, SIGKILL of its group), which every benchmark calls in a `finally`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
ADMIN_KEY = "tp-bench-admin-key-0123456789abcdef"
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


# -- processes --------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_wall: float
    started_mono: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def rss_bytes(self, tree: bool = True) -> int:
        """Resident memory of the process (and its children when `tree`)."""
        try:
            root = psutil.Process(self.pid)
            procs = [root, *(root.children(recursive=True) if tree else [])]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total


@dataclass
class Processes:
    """Processes started by one benchmark; `close()` stops all of them."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        logf = log_path.open("ab")
        wall, mono = time.time(), time.monotonic()
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            logf.close()
        proc = Proc(name, popen, log_path, wall, mono)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace_s: float = 10.0) -> None:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.popen.wait(timeout=10)
        # Anything the process left in its own group (its session) goes too.
        _kill_group(proc.pid)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def wait_http(
    url: str,
    proc: Proc | None = None,
    timeout_s: float = 60.0,
    interval_s: float = 0.05,
    headers: dict[str, str] | None = None,
) -> float:
    """Poll `url` until it answers 200; returns the monotonic instant it did."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, headers=headers) as client:
        while True:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
            try:
                if client.get(url).status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                tail = proc.log_tail() if proc is not None else ""
                raise RuntimeError(f"{url} not ready in {timeout_s:.0f}s\n{tail}")
            time.sleep(interval_s)


# -- the processes the benchmarks use ---------------------------------------------------


def fake_engine_argv(
    port: int | str,
    tokens: int = 16,
    token_delay_ms: float = 0.0,
    first_token_delay_ms: float = 0.0,
    startup_delay_ms: float = 0.0,
) -> list[str]:
    return [
        PYTHON,
        "-m",
        "torpor.testing.fake_engine",
        "--port",
        str(port),
        "--tokens",
        str(tokens),
        "--token-delay-ms",
        str(token_delay_ms),
        "--first-token-delay-ms",
        str(first_token_delay_ms),
        "--startup-delay-ms",
        str(startup_delay_ms),
    ]


def start_fake_engine(procs: Processes, name: str, **kw: Any) -> tuple[Proc, str]:
    """A fake engine as a process; returns it and its base URL (without /v1)."""
    port = free_port()
    proc = procs.start(name, fake_engine_argv(port, **kw))
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc, timeout_s=30, interval_s=0.02)
    return proc, url


@dataclass
class Torpor:
    proc: Proc
    url: str
    data_dir: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    def api(self, timeout_s: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout_s)

    def deploy(self, spec: dict[str, Any]) -> dict[str, Any]:
        with self.api() as c:
            r = c.post("/api/deployments", json=spec)
            if r.status_code != 201:
                raise RuntimeError(f"deploy {spec.get('name')}: {r.status_code} {r.text}")
            return dict(r.json())

    def get(self, name: str) -> dict[str, Any]:
        with self.api() as c:
            r = c.get(f"/api/deployments/{name}")
            r.raise_for_status()
            return dict(r.json())

    def wait_for(self, name: str, check: Any, timeout_s: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            dep = self.get(name)
            if check(dep):
                return dep
            if time.monotonic() > deadline:
                raise RuntimeError(f"deployment {name} never matched; last view: {dep}")
            if not self.proc.alive():
                raise RuntimeError(f"torpor serve exited:\n{self.proc.log_tail()}")
            time.sleep(0.05)


def start_torpor(
    procs: Processes, data_dir: Path, name: str = "torpor", env: dict[str, str] | None = None
) -> Torpor:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = procs.start(
        name,
        [PYTHON, "-m", "torpor", "serve", "--port", str(port)],
        env={
            "TORPOR_ADMIN_KEY": ADMIN_KEY,
            "TORPOR_DATA_DIR": str(data_dir),
            "TORPOR_CREATE_DEFAULT_DEPLOYMENT": "false",
            "TORPOR_LOG_LEVEL": "warning",
            "TORPOR_WORKER_STOP_GRACE_S": "3",
            **(env or {}),
        },
        cwd=data_dir,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc, timeout_s=60)
    return Torpor(proc, url, data_dir)


def placeholder_spec(name: str, engine_port: int, **fields: Any) -> dict[str, Any]:
    """A deployment whose one worker is a placeholder process and whose fixed port is an
    engine started by the bench: torpor probes and routes to that engine, so the same
    engine process serves the direct, torpor and LiteLLM measurements."""
    spec: dict[str, Any] = {
        "name": name,
        "framework": "custom",
        "options": {
            "command": f"{PYTHON} -c 'import time; time.sleep(86400)'",
            "port": engine_port,
            "health_path": "/health",
        },
        "min_workers": 1,
        "max_workers": 1,
        "concurrency": 10_000,
        "max_queue": 10_000,
        "idle_timeout_s": 86_400,
    }
    spec.update(fields)
    return spec


def fake_spec(name: str, engine_args: Sequence[str], **fields: Any) -> dict[str, Any]:
    """A deployment of the fake engine started by torpor (custom framework)."""
    command = " ".join([PYTHON, "-m", "torpor.testing.fake_engine", "--port", "{port}"])
    spec: dict[str, Any] = {
        "name": name,
        "framework": "custom",
        "options": {"command": " ".join([command, *engine_args]), "health_path": "/health"},
    }
    spec.update(fields)
    return spec


LLAMA_ARGS = ["--n_ctx", "2048"]


def llama_spec(name: str, **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "framework": "llama.cpp",
        "model": "smollm2-135m-instruct",
        "framework_args": list(LLAMA_ARGS),
    }
    spec.update(fields)
    return spec


def llama_available() -> str | None:
    """None when llama.cpp's server and the bundled model are here, else why not."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed"
    try:
        from torpor.models import bundled_model_path

        bundled_model_path()
    except Exception as exc:
        return str(exc)
    return None


def llama_argv(alias: str, port: int) -> list[str]:
    """Exactly the command line torpor's llama.cpp engine runs for `llama_spec(alias)`."""
    from torpor.engines.llamacpp import LlamaCppEngine
    from torpor.models import bundled_model_path
    from torpor.spec import DeploymentSpec

    spec = DeploymentSpec.model_validate(llama_spec(alias))
    launch = LlamaCppEngine().launch(spec, bundled_model_path())
    return [a.replace("{host}", "127.0.0.1").replace("{port}", str(port)) for a in launch.argv]


# -- machine facts ----------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    status = _git("status", "--porcelain")
    return {
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "os": f"{platform.system()} {platform.release()}",
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "packages": {
            d: _version(d)
            for d in (
                "torpor",
                "aiohttp",
                "uvicorn",
                "uvloop",
                "httptools",
                "fastapi",
                "starlette",
                "sqlalchemy",
                "llama_cpp_python",
                "matplotlib",
            )
        },
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }
