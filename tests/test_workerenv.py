"""What a worker's environment holds: allowlisted host variables, its deployment's env, the
engine's and the device variables, its id; never torpor's own settings."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import ADMIN_KEY, TorporServer, fake_spec
from torpor.modelstore.ollama import ollama_pull
from torpor.modelstore.progress import DownloadProgress
from torpor.runtime.workerenv import WORKER_ID_ENV, worker_env

HOST = {
    "PATH": "/usr/local/bin:/usr/bin",
    "HOME": "/home/op",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "Europe/Paris",
    "SSL_CERT_FILE": "/etc/ssl/ca.pem",
    "https_proxy": "http://proxy:3128",
    "NO_PROXY": "localhost",
    "HF_HOME": "/cache/hf",
    "LD_LIBRARY_PATH": "/usr/local/cuda/lib64",
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    "NCCL_SOCKET_IFNAME": "eth0",
    "VIRTUAL_ENV": "/opt/venv",
    # torpor's settings and the operator's secrets: never passed on.
    "TORPOR_ADMIN_KEY": "tp-admin-secret",
    "TORPOR_DATABASE_URL": "postgresql+asyncpg://u:pw@db/torpor",
    "TORPOR_DATA_DIR": "/srv/torpor",
    "HF_TOKEN": "hf_operator",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "OPERATOR_SECRET": "op",
    "DOCKER_HOST": "unix:///run/user/1000/docker.sock",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3",
    "PYTHONPATH": "/srv/torpor/src",
}


def test_only_allowlisted_host_variables_reach_a_worker() -> None:
    env = worker_env(HOST, {}, {}, "w-1").env
    assert not {k for k in env if k.startswith("TORPOR_") and k != WORKER_ID_ENV}
    for secret in ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "OPERATOR_SECRET", "DOCKER_HOST"):
        assert secret not in env
    assert "PYTHONPATH" not in env and "CUDA_VISIBLE_DEVICES" not in env
    kept = {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TZ",
        "SSL_CERT_FILE",
        "https_proxy",
        "NO_PROXY",
        "HF_HOME",
        "LD_LIBRARY_PATH",
        "CUDA_DEVICE_ORDER",
        "NCCL_SOCKET_IFNAME",
        "VIRTUAL_ENV",
    }
    assert {k: env[k] for k in kept} == {k: HOST[k] for k in kept}
    assert env[WORKER_ID_ENV] == "w-1"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_launch_env_devices_and_id_win_in_that_order() -> None:
    launch = {
        "HF_TOKEN": "hf_deployment",
        "PATH": "/opt/engine/bin",
        "PYTHONUNBUFFERED": "0",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3",
    }
    env = worker_env(HOST, launch, {"CUDA_VISIBLE_DEVICES": "2"}, "w-2").env
    assert env["HF_TOKEN"] == "hf_deployment"
    assert env["PATH"] == "/opt/engine/bin"
    assert env["PYTHONUNBUFFERED"] == "0"
    assert env["CUDA_VISIBLE_DEVICES"] == "2"


def test_a_deployment_cannot_set_torpor_names_nor_the_worker_id() -> None:
    launch = {
        "TORPOR_WORKER_ID": "someone-else",
        "TORPOR_ADMIN_KEY": "x",
        "torpor_database_url": "sqlite:///x",
        "KEEP": "1",
        # What the function engine tells its worker program.
        "TORPOR_FUNCTION": "eyJtb2R1bGUiOiAibSJ9",
    }
    got = worker_env(HOST, launch, {}, "w-3")
    assert got.env[WORKER_ID_ENV] == "w-3"
    assert got.env["TORPOR_FUNCTION"] == launch["TORPOR_FUNCTION"]
    assert "TORPOR_ADMIN_KEY" not in got.env and "torpor_database_url" not in got.env
    assert got.env["KEEP"] == "1"
    assert got.refused == ("TORPOR_ADMIN_KEY", "TORPOR_WORKER_ID", "torpor_database_url")


def test_container_command_lines_also_get_the_container_engine_variables() -> None:
    plain = worker_env(HOST, {}, {}, "w-4").env
    cli = worker_env(HOST, {}, {}, "w-4", container_cli=True).env
    assert "DOCKER_HOST" not in plain
    assert cli["DOCKER_HOST"] == HOST["DOCKER_HOST"]
    assert "TORPOR_ADMIN_KEY" not in cli


def test_no_worker_id_for_helper_processes() -> None:
    env = worker_env(HOST, {"OLLAMA_MODELS": "/m"}, {}, None).env
    assert WORKER_ID_ENV not in env and env["OLLAMA_MODELS"] == "/m"


def test_a_real_worker_gets_none_of_torpors_environment(
    server_factory: Callable[..., TorporServer],
) -> None:
    srv = server_factory(env={"OPERATOR_SECRET": "op-secret-1", "LC_ALL": "C.UTF-8"})
    srv.deploy(fake_spec("envcheck", min_workers=1, env={"HF_TOKEN": "hf_x"}))
    dep = srv.wait_for("envcheck", lambda d: d["ready_workers"] == 1)
    worker = dep["workers"][0]
    env = psutil.Process(worker["pid"]).environ()
    # The server itself has them (so a leak would show)...
    server_env = psutil.Process(srv.proc.pid if srv.proc else 0).environ()
    assert server_env["TORPOR_ADMIN_KEY"] == ADMIN_KEY
    assert server_env["OPERATOR_SECRET"] == "op-secret-1"
    # ...and the worker does not.
    leaked = {k for k in env if k.startswith("TORPOR_") and k != WORKER_ID_ENV}
    assert leaked == set()
    assert ADMIN_KEY not in env.values()
    assert "OPERATOR_SECRET" not in env
    assert env["HF_TOKEN"] == "hf_x"
    assert env["PATH"] == server_env["PATH"]
    assert env["LC_ALL"] == "C.UTF-8"
    assert env[WORKER_ID_ENV] == worker["id"]
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # a CPU worker sees no accelerator


FAKE_OLLAMA = r'''#!{python}
"""Test double of `ollama serve` (no ollama here): records its environment, answers a pull."""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

with open({record!r}, "w") as f:
    json.dump(dict(os.environ), f)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer(b'{{"version": "0.0.0"}}')

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.answer(b'{{"status": "success"}}\n')

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


host, _, port = os.environ["OLLAMA_HOST"].rpartition(":")
ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
'''


async def test_the_ollama_of_a_pull_gets_none_of_torpors_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "ollama-env.json"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "ollama"
    exe.write_text(FAKE_OLLAMA.format(python=sys.executable, record=str(record)))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TORPOR_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("OPERATOR_SECRET", "op-secret-2")
    models = tmp_path / "models"
    models.mkdir()

    await ollama_pull("llama3.2:1b", models, "served", DownloadProgress("ollama"), 10**9)

    env = json.loads(record.read_text())
    assert env["OLLAMA_MODELS"] == str(models)
    assert env["OLLAMA_HOST"].startswith("127.0.0.1:")
    assert env["PATH"] == os.environ["PATH"]
    assert "TORPOR_ADMIN_KEY" not in env and "OPERATOR_SECRET" not in env
    assert ADMIN_KEY not in env.values()
