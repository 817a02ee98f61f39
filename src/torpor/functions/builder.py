"""Images on the local runtime: one virtual environment per image definition, built once
under `<data_dir>/images/<image id>/` and reused by every worker and deploy.

With `uv` on PATH it creates the environment and installs packages (fast); otherwise
`python -m venv` and pip (the server's own pip, pointed at the new environment). A build
holds a file lock, so several torpor processes sharing a data dir build an image once; a
marker file written last tells a finished image from an interrupted build, which is
removed and built again. Local files (checked against their SHA-256) go to `files/` in the
image; the function server links them into its working directory. A `.pth` file makes torpor's function server importable in the
image, after the image's own packages.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torpor
from torpor.errors import BuildError
from torpor.functions.containers import PYTHON as CONTAINER_PYTHON
from torpor.functions.containers import ContainerBuilder, tag_for
from torpor.functions.image import FILES_DIR, Image, write_files
from torpor.runtime.base import node_cache_root
from torpor.runtime.containers import container_runtime

MARKER = ".torpor-image.json"
PTH_NAME = "_torpor_function_server.pth"

Log = Callable[[str], None]


@dataclass(frozen=True)
class BuiltImage:
    id: str
    python: str
    built: bool
    seconds: float
    # The container image's tag, for an image built by docker or podman.
    container: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "python": self.python,
            "built": self.built,
            "seconds": self.seconds,
            "container": self.container,
        }


def torpor_root() -> Path:
    """The directory holding the `torpor` package, put on the image's path."""
    return Path(torpor.__file__).resolve().parent.parent


def decode_files(image: Image, contents: Mapping[str, str]) -> dict[str, bytes]:
    """The image's local files by destination, checked against their SHA-256."""
    out: dict[str, bytes] = {}
    for f in image.files:
        text = contents.get(f.sha256)
        if not isinstance(text, str):
            raise BuildError(f"image file {f.dst}: its content was not sent with the build")
        try:
            data = base64.b64decode(text, validate=True)
        except ValueError:
            raise BuildError(f"image file {f.dst}: content is not valid base64") from None
        if hashlib.sha256(data).hexdigest() != f.sha256:
            raise BuildError(f"image file {f.dst}: content does not match its sha256")
        out[f.dst] = data
    return out


def find_interpreter(version: str) -> str | None:
    """A Python `version` interpreter on this host (the server's own when it matches)."""
    base = getattr(sys, "_base_executable", sys.executable)
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return str(base)
    return shutil.which(f"python{version}")


class ImageBuilder:
    def __init__(
        self,
        root: Path,
        installer: str | None = None,
        container: str | bool | None = True,
        record_only: bool = False,
    ):
        self.root = root
        # Where workers run on other nodes (Ray): the image is only recorded here (its
        # definition and local files), and each node builds it for its own workers
        # (`build_on_node`); its `python` here is where it would be, never used.
        self.record_only = record_only
        # "uv" or "pip"; by default uv when it is on PATH.
        self.installer = installer or ("uv" if shutil.which("uv") else "pip")
        # The docker or podman command line that builds images with a registry base (by
        # default whichever is on PATH); without one they are virtual environments.
        self.container = container_runtime() if container is True else container or None

    def path(self, image_id: str) -> Path:
        return self.root / image_id

    def python_of(self, image_id: str) -> Path:
        return self.path(image_id) / "bin" / "python"

    def cached(self, image: Image) -> BuiltImage | None:
        """The image when it is built (nothing to do), else None."""
        marker = self.path(image.id) / MARKER
        if not marker.is_file():
            return None
        if not self.record_only and json.loads(marker.read_text()).get("recorded_only"):
            return None  # recorded for a cluster's nodes, never built here
        self._link_torpor(self.path(image.id))
        return BuiltImage(image.id, str(self.python_of(image.id)), False, 0.0)

    async def build(
        self, definition: dict[str, Any], log: Log, contents: Mapping[str, str] | None = None
    ) -> BuiltImage:
        """Build the image (or find it built); `contents` holds its local files by SHA-256,
        base64, as `Image.contents()` sends them."""
        image = Image.from_definition(definition)  # ValueError for a bad definition
        if self.record_only:
            return await asyncio.to_thread(self._record, image, contents or {}, log)
        if image.base and self.container:
            return await self._build_container(image, contents or {}, log)
        found = self.cached(image)
        if found is not None:
            log(f"image {image.id} is built already")
            return found
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / f".{image.id}.lock"
        with lock_path.open("w") as lock:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            found = self.cached(image)  # built by another process meanwhile
            if found is not None:
                return found
            started = time.monotonic()
            try:
                await self._build(image, log, contents or {})
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, self.path(image.id), True)
                raise
            seconds = round(time.monotonic() - started, 3)
            log(f"image {image.id} built in {seconds:.1f}s")
            return BuiltImage(image.id, str(self.python_of(image.id)), True, seconds)

    def _record(self, image: Image, contents: Mapping[str, str], log: Log) -> BuiltImage:
        found = self.cached(image)
        if found is not None:
            log(f"image {image.id} is recorded already")
            return found
        dest = self.path(image.id)
        files = decode_files(image, contents)
        dest.mkdir(parents=True, exist_ok=True)
        write_files(dest / FILES_DIR, files)
        marker = {
            "id": image.id,
            "definition": image.definition(),
            "recorded_only": True,
            "built_at": datetime.now(UTC).isoformat(),
        }
        tmp = dest / f".{MARKER}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(marker, indent=2))
        os.replace(tmp, dest / MARKER)  # last: a marker means the recipe is whole
        log(f"image {image.id} recorded: each node builds it once for its workers")
        return BuiltImage(image.id, str(self.python_of(image.id)), False, 0.0)

    async def _build_container(
        self, image: Image, contents: Mapping[str, str], log: Log
    ) -> BuiltImage:
        assert self.container is not None
        builder = ContainerBuilder(self.container, self._exit_code)
        tag = tag_for(image)
        if await builder.cached(image):
            log(f"image {image.id} is built already (container image {tag})")
            return BuiltImage(image.id, CONTAINER_PYTHON, False, 0.0, tag)
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / f".{image.id}.lock").open("w") as lock:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            if await builder.cached(image):  # built by another process meanwhile
                return BuiltImage(image.id, CONTAINER_PYTHON, False, 0.0, tag)
            log(f"building container image {tag} from {image.base}")
            try:
                seconds = await builder.build(image, decode_files(image, contents), log)
            except RuntimeError as exc:
                raise BuildError(str(exc)) from None
        log(f"image {image.id} built in {seconds:.1f}s (container image {tag})")
        return BuiltImage(image.id, CONTAINER_PYTHON, True, seconds, tag)

    async def _build(self, image: Image, log: Log, contents: Mapping[str, str]) -> None:
        dest = self.path(image.id)
        await asyncio.to_thread(shutil.rmtree, dest, True)  # an interrupted build
        files = decode_files(image, contents)  # before anything is installed
        if image.base:
            log(
                f"base {image.base}: no docker or podman on PATH to build a container image; "
                f"building a virtual environment of Python {image.python_version} instead"
            )
        python = str(dest / "bin" / "python")
        if self.installer == "uv":
            await self._run(["uv", "venv", "--python", image.python_version, str(dest)], log)
            if image.packages:
                install = ["uv", "pip", "install", "--python", python, *image.packages]
                await self._run(install, log)
        else:
            interpreter = find_interpreter(image.python_version)
            if interpreter is None:
                raise BuildError(
                    f"Python {image.python_version} is not on this host: install it (or uv)"
                )
            await self._run([interpreter, "-m", "venv", "--without-pip", str(dest)], log)
            if image.packages:
                pip = [sys.executable, "-m", "pip", "--python", python, "install"]
                await self._run([*pip, "--progress-bar", "off", *image.packages], log)
        env = {
            **os.environ,
            **dict(image.environment),
            "VIRTUAL_ENV": str(dest),
            "PATH": f"{dest / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        for command in image.commands:
            await self._run(["/bin/sh", "-c", command], log, env)
        if files:
            await asyncio.to_thread(write_files, dest / FILES_DIR, files)
            log(f"{len(files)} local file(s) placed in the image")
        self._link_torpor(dest)
        marker = {
            "id": image.id,
            "definition": image.definition(),
            "installer": self.installer,
            "built_at": datetime.now(UTC).isoformat(),
        }
        (dest / MARKER).write_text(json.dumps(marker, indent=2))

    def _link_torpor(self, dest: Path) -> None:
        """(Re)write the .pth that appends torpor's directory to the image's sys.path."""
        root = str(torpor_root())
        for site in dest.glob("lib/python*/site-packages"):
            pth = site / PTH_NAME
            if not pth.is_file() or pth.read_text().strip() != root:
                pth.write_text(root + "\n")

    async def _run(self, argv: list[str], log: Log, env: dict[str, str] | None = None) -> None:
        code, tail = await self._exec(argv, log, env)
        if code != 0:
            raise BuildError(f"`{' '.join(argv)}` exited with {code}: " + " | ".join(tail[-5:]))

    async def _exit_code(self, argv: list[str], log: Log) -> int:
        return (await self._exec(argv, log, None))[0]

    async def _exec(
        self, argv: list[str], log: Log, env: dict[str, str] | None
    ) -> tuple[int, list[str]]:
        log("$ " + " ".join(argv))
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        assert proc.stdout is not None
        tail: list[str] = []
        try:
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                tail = [*tail[-19:], line]
                log(line)
            code = await proc.wait()
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        return code, tail


def node_build_args(root: Path, image_id: str, shared: Path | None) -> tuple[Any, ...]:
    """On torpor's host: what a node needs to build image `image_id`, recorded (or built)
    under `root`: its definition, its local files (base64 by SHA-256, as a client sends
    them) and the shared storage path, if any (see `build_on_node`)."""
    dest = root / image_id
    definition = json.loads((dest / MARKER).read_text())["definition"]
    contents = {
        f.sha256: base64.b64encode((dest / FILES_DIR / f.dst).read_bytes()).decode()
        for f in Image.from_definition(definition).files
    }
    return (definition, contents, str(shared) if shared is not None else None)


def build_on_node(
    definition: dict[str, Any], contents: Mapping[str, str], shared: str | None, node_dir: str
) -> dict[str, Any]:
    """On a node (a Ray task pinned to it): build the image once into the node's cache
    (`TORPOR_NODE_CACHE` of the node, else `node_dir`), or into shared storage when there
    is one; a node (or cluster) that has it builds nothing. The builder's file lock makes
    two workers landing together build it once. Always a virtual environment: a registry
    base is built as one (no container engine is assumed on the nodes)."""
    root = (Path(shared) if shared else node_cache_root(node_dir)) / "images"
    lines: list[str] = []
    builder = ImageBuilder(root, container=False)
    built = asyncio.run(builder.build(definition, lines.append, contents))
    return {**built.view(), "log": lines[-5:]}
