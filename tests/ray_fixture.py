"""A real multi-node Ray cluster on this machine, started once per test session.

A head (one CPU, no GPU) and two nodes, each with two GPUs declared as `A100`
(`accelerator_type:A100`), all on the loopback address 127.0.0.2 with their own temp dir. Stopped by killing
exactly the processes it started (those whose command line names its port or its temp
dir) and their descendants; never `ray stop`.

Import into ``conftest.py``: ``from tests.ray_fixture import ray_cluster``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

# The `ray` command of the environment running the tests.
RAY = Path(sys.executable).parent / "ray"
# Node failure is seen within about 2 s instead of Ray's default (about 30 s).
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}


# Ray replaces "127.0.0.1" and "localhost" (as a node address and in a cluster address) by
# the machine's outward address, so a cluster "on 127.0.0.1" talks over the non-loopback
# interface. Another loopback address is taken as given: everything stays on loopback.
RAY_NODE_IP = "127.0.0.2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RayCluster:
    port: int
    temp_dir: Path
    gpu_nodes: int = 2
    env: dict[str, str] = field(default_factory=dict)
    # Each GPU node's own model cache (TORPOR_NODE_CACHE in its environment), as separate
    # machines have separate disks.
    node_caches: list[Path] = field(default_factory=list)
    # GPU nodes started so far: a replacement node never reuses a live node's cache name.
    started_nodes: int = 0

    @property
    def address(self) -> str:
        return f"{RAY_NODE_IP}:{self.port}"

    def start(self) -> RayCluster:
        self.env = {**os.environ, **RAY_ENV}
        common = [
            "--node-ip-address",
            RAY_NODE_IP,
            "--disable-usage-stats",
            "--include-dashboard=false",
        ]
        self._run(
            [
                "start",
                "--head",
                "--port",
                str(self.port),
                "--num-cpus",
                "1",
                "--num-gpus",
                "0",
                "--temp-dir",
                str(self.temp_dir),
                *common,
            ]
        )
        for _ in range(self.gpu_nodes):
            self.add_gpu_node()
        self.wait_nodes(1 + self.gpu_nodes)
        return self

    def add_gpu_node(self, kind: str = "A100") -> None:
        cache = self.temp_dir / f"cache{self.started_nodes}"
        self.started_nodes += 1
        self.node_caches.append(cache)
        self._run(
            [
                "start",
                "--address",
                self.address,
                "--num-cpus",
                "3",
                "--num-gpus",
                "2",
                "--resources",
                json.dumps({f"accelerator_type:{kind}": 2}),
                "--node-ip-address",
                RAY_NODE_IP,
                "--disable-usage-stats",
            ],
            {"TORPOR_NODE_CACHE": str(cache)},
        )

    def ensure_gpu_nodes(self) -> None:
        """Replace GPU nodes an earlier test killed (kill_node_of), so a test that needs
        `gpu_nodes` of them has them whatever ran before it."""
        missing = self.gpu_nodes - len(self.node_caches)
        for _ in range(missing):
            self.add_gpu_node()
        if missing > 0:
            self.wait_nodes(1 + self.gpu_nodes)

    def _run(self, args: list[str], env: dict[str, str] | None = None) -> None:
        out = subprocess.run(
            [str(RAY), *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")

    def raylets(self) -> list[psutil.Process]:
        """This cluster's raylet processes (one per node)."""
        return [p for p in self.processes() if p.info["name"] == "raylet"]

    def alive_nodes(self) -> int:
        return len(self.raylets())

    def wait_nodes(self, n: int, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while self.alive_nodes() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.alive_nodes()} of {n} ray nodes came up")
            time.sleep(0.1)

    def processes(self) -> list[psutil.Process]:
        marks = (str(self.temp_dir), self.address, f"gcs_server_port={self.port}")
        found = []
        for p in psutil.process_iter(["pid", "name", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or ())
            if any(m in cmd for m in marks):
                found.append(p)
        return found

    def stop(self) -> None:
        procs = self.processes()
        family: dict[int, psutil.Process] = {}
        for p in procs:
            family[p.pid] = p
            try:
                for child in p.children(recursive=True):
                    family[child.pid] = child
            except psutil.Error:
                pass
        for p in family.values():
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(list(family.values()), timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def kill_node_of(cluster: RayCluster, pid: int) -> psutil.Process:
    """Kill the raylet whose node runs process `pid` (an engine), and the node's other
    processes; returns the raylet killed."""
    proc = psutil.Process(pid)
    for parent in proc.parents():
        if parent.name() == "raylet":
            # The node is gone, and its cache with it (see RayCluster.ensure_gpu_nodes).
            with contextlib.suppress(psutil.Error, ValueError):
                cluster.node_caches.remove(Path(parent.environ()["TORPOR_NODE_CACHE"]))
            family = [parent, *parent.children(recursive=True)]
            for p in family:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            return parent
    raise AssertionError(f"process {pid} runs under no raylet of this cluster")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    # A short temp dir: Ray's socket paths must fit in 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="tpray-", dir="/tmp"))
    cluster = RayCluster(_free_port(), temp)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
