"""Workers in containers: how they are named and labelled, and how they are removed.

The process torpor starts for a container worker is the docker (or podman) command line;
the container itself is a child of the container engine, not of torpor. Killing the
command line (or torpor dying, which kills it through PDEATHSIG) leaves the container
running, so every container gets a name and labels from which torpor finds it again:

- `--name torpor-<worker id>`: `stop()` removes it by name once the command line is gone;
- `--label torpor.worker=<worker id>`;
- `--label torpor.instance=<id of this torpor data dir>`: at start, containers with this
  label that no worker of this process runs are left from an earlier run and removed.

An engine writes the placeholders below into its command line; the runtime fills them in
at start, as it does `{port}` and `{host}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from torpor.runtime.workerenv import worker_env

log = logging.getLogger(__name__)

CONTAINER_RUNTIMES = ("docker", "podman")
NAME_PREFIX = "torpor-"
WORKER_LABEL = "torpor.worker"
INSTANCE_LABEL = "torpor.instance"

# Placeholders filled by the runtime: the worker's id, this torpor's instance id, and the
# worker's accelerator ids as a comma-separated list ("0,1").
WORKER_ID = "{worker_id}"
INSTANCE = "{instance}"
GPU_IDS = "{gpu_ids}"
# The container's name in a command line; its presence marks a container launch.
NAME_ARG = NAME_PREFIX + WORKER_ID

# Longest a `rm -f` or `ps` of the container engine may take.
CLI_TIMEOUT_S = 30.0


def container_runtime() -> str | None:
    """The container engine's command line on PATH: docker, else podman, else None."""
    for name in CONTAINER_RUNTIMES:
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def run_options() -> list[str]:
    """Options of `<runtime> run` for a worker: removed when it ends, an init process that
    passes signals on, the host's network (so `{port}` means the same), name and labels."""
    return [
        "--rm",
        "--init",
        "--network",
        "host",
        "--name",
        NAME_ARG,
        "--label",
        f"{WORKER_LABEL}={WORKER_ID}",
        "--label",
        f"{INSTANCE_LABEL}={INSTANCE}",
    ]


def instance_id(data_dir: Path) -> str:
    """A short, stable id of one torpor data dir (one torpor deployment on this host)."""
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]


def container_name(worker_id: str) -> str:
    return NAME_PREFIX + worker_id


def is_container_launch(argv: Sequence[str]) -> bool:
    return NAME_ARG in argv


class ContainerCli:
    """`rm -f` and `ps` through the docker or podman command line (`exe`)."""

    def __init__(self, exe: str, host_env: Mapping[str, str] | None = None):
        self.exe = exe
        env = os.environ if host_env is None else host_env
        self._env = worker_env(env, {}, {}, None, container_cli=True).env

    async def _run(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            self.exe,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -1, "", f"{self.exe} {args[0]}: no answer in {CLI_TIMEOUT_S:.0f}s"
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    async def remove(self, refs: Sequence[str]) -> bool:
        """`rm -f` containers by name or id; True when the command succeeded. A container
        already gone is not an error worth a warning (`--rm` removes it on exit)."""
        if not refs:
            return True
        try:
            code, _, err = await self._run("rm", "-f", *refs)
        except OSError as exc:
            log.warning("cannot run %s rm -f %s: %s", self.exe, " ".join(refs), exc)
            return False
        if code != 0 and "no such container" not in err.lower():
            log.warning("%s rm -f %s failed: %s", self.exe, " ".join(refs), err.strip())
        return code == 0

    async def names(self, instance: str) -> list[str] | None:
        """Names of the containers (running or not) labelled with `instance`; None when
        the container engine cannot be asked (not installed, not running)."""
        try:
            code, out, err = await self._run(
                "ps",
                "-a",
                "--filter",
                f"label={INSTANCE_LABEL}={instance}",
                "--format",
                "{{.Names}}",
            )
        except OSError as exc:
            log.info("container clean-up skipped: cannot run %s: %s", self.exe, exc)
            return None
        if code != 0:
            first = err.strip().splitlines()[:1]
            log.info("container clean-up skipped: %s ps failed: %s", self.exe, "".join(first))
            return None
        return [n.strip() for n in out.splitlines() if n.strip()]
