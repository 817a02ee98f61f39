"""`torpor.Image`: a content-addressed definition of a worker's environment.

An image is data: a base (a registry image, or none), a Python version, pip packages,
shell commands, environment variables and local files (each by the SHA-256 of its content).
Its id is a hash of that data, so the same definition is built once and reused by every
worker and deploy; any change (a package added, a version pinned, a file edited) is
another image. Builders live elsewhere (`torpor.functions.builder`: virtual environments
on the local runtime; `torpor.functions.containers`: container images).

Standard library only: this module is imported inside workers too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from torpor.funcproto.routes import SPEC_ENV

FORMAT = 1
_VERSION_RE = re.compile(r"^3\.\d{1,2}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
# Local files travel with the build request: at most this much in one image.
MAX_FILES_BYTES = 16 * 1024 * 1024
# Where an image keeps its local files (linked into the worker's working directory).
FILES_DIR = "files"
# Where the function server writes the deployment's code in its working directory.
RESERVED_DIR = "code"
_SKIPPED = {"__pycache__", ".git"}


def file_destination(dst: str) -> str:
    """A local file's place in the image, relative to the function's working directory;
    ValueError for absolute paths, `..` and the function server's own `code/`."""
    path = PurePosixPath(dst)
    parts = [p for p in path.parts if p not in ("", ".")]
    if path.is_absolute() or not parts or ".." in parts:
        raise ValueError(f"image file destination {dst!r}: use a relative path without '..'")
    if parts[0] == RESERVED_DIR:
        raise ValueError(f"image file destination {dst!r}: {RESERVED_DIR}/ holds the app's code")
    return "/".join(parts)


def write_files(root: Path, files: Mapping[str, bytes]) -> None:
    """Place an image's local files (by destination) under `root`."""
    for dst, data in files.items():
        target = root / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def in_worker() -> bool:
    """Whether this process is a function's worker (which imports the app file again)."""
    return SPEC_ENV in os.environ


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class LocalFile:
    """A file of the caller's machine placed at `dst` in the image (content `sha256`)."""

    dst: str
    sha256: str
    # Where the caller reads it from; not part of the image's identity.
    src: str = field(default="", compare=False)


def default_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class Image:
    """Build with `Image.python("3.11")` or `Image.from_registry("org/image:tag")`, then
    chain `.pip_install(...)`, `.run_commands(...)`, `.env({...})`: each returns a new
    image (images are immutable values)."""

    python_version: str = field(default_factory=default_python)
    base: str | None = None
    packages: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    files: tuple[LocalFile, ...] = ()

    def __post_init__(self) -> None:
        if not _VERSION_RE.match(self.python_version):
            raise ValueError(f"python version must look like 3.11, got {self.python_version!r}")
        for name, _ in self.environment:
            if not _ENV_RE.match(name):
                raise ValueError(f"image env: invalid variable name {name!r}")
        for item in (*self.packages, *self.commands):
            if not isinstance(item, str) or not item.strip():
                raise ValueError("image packages and commands must be non-empty strings")
        for f in self.files:
            file_destination(f.dst)
            if not _SHA_RE.match(f.sha256):
                raise ValueError(f"image file {f.dst}: sha256 must be 64 hex digits")

    @classmethod
    def python(cls, version: str | None = None) -> Image:
        """A plain Python environment (the server's Python version by default)."""
        return cls(python_version=version or default_python())

    @classmethod
    def from_registry(cls, ref: str, python: str | None = None) -> Image:
        """A container image as the base (used where a container runtime builds images;
        the local runtime without one builds a virtual environment of `python`)."""
        if not ref or any(c.isspace() for c in ref):
            raise ValueError(f"invalid image reference {ref!r}")
        return cls(python_version=python or default_python(), base=ref)

    def pip_install(self, *packages: str) -> Image:
        return replace(self, packages=(*self.packages, *packages))

    def run_commands(self, *commands: str) -> Image:
        return replace(self, commands=(*self.commands, *commands))

    def env(self, variables: Mapping[str, str]) -> Image:
        merged = dict(self.environment) | {str(k): str(v) for k, v in variables.items()}
        return replace(self, environment=tuple(sorted(merged.items())))

    def add_local_file(self, src: str | Path, dst: str) -> Image:
        """Place a file of this machine at `dst` (relative to the function's working
        directory). Its content is hashed now: an edited file is another image."""
        if in_worker():
            return self  # the worker's image holds the file; its source is not here
        path = Path(src).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"add_local_file: no such file {src}")
        return self._with_files([LocalFile(file_destination(dst), sha256_of(path), str(path))])

    def add_local_dir(self, src: str | Path, dst: str) -> Image:
        """Place a directory of this machine (its files, recursively; `__pycache__` and
        `.git` left out) at `dst`; also importable when it is a package."""
        if in_worker():
            return self
        root = Path(src).expanduser().resolve()
        if not root.is_dir():
            raise ValueError(f"add_local_dir: no such directory {src}")
        base = file_destination(dst)
        found = [
            LocalFile(f"{base}/{p.relative_to(root).as_posix()}", sha256_of(p), str(p))
            for p in sorted(root.rglob("*"))
            if p.is_file() and not _SKIPPED & set(p.relative_to(root).parts)
        ]
        return self._with_files(found)

    def _with_files(self, added: list[LocalFile]) -> Image:
        merged = {f.dst: f for f in self.files} | {f.dst: f for f in added}
        files = tuple(merged[k] for k in sorted(merged))
        total = sum(Path(f.src).stat().st_size for f in files if f.src)
        if total > MAX_FILES_BYTES:
            raise ValueError(
                f"image files: {total} bytes, more than {MAX_FILES_BYTES // (1024 * 1024)} MiB; "
                "install big data from a package or fetch it at start"
            )
        return replace(self, files=files)

    def contents(self) -> dict[str, str]:
        """The local files' contents by SHA-256, base64 (sent with the build request);
        ValueError when a file changed since it was added (its hash is the image's id)."""
        out: dict[str, str] = {}
        for f in self.files:
            data = Path(f.src).read_bytes()
            if hashlib.sha256(data).hexdigest() != f.sha256:
                raise ValueError(f"{f.src} changed after it was added to the image: load again")
            out[f.sha256] = base64.b64encode(data).decode()
        return out

    # -- identity -------------------------------------------------------------------------

    def definition(self) -> dict[str, Any]:
        """The JSON form sent to the server; the id is computed from exactly this."""
        return {
            "format": FORMAT,
            "python": self.python_version,
            "base": self.base,
            "packages": list(self.packages),
            "commands": list(self.commands),
            "env": dict(self.environment),
            **({"files": [[f.dst, f.sha256] for f in self.files]} if self.files else {}),
        }

    @property
    def id(self) -> str:
        canonical = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
        return "im-" + hashlib.sha256(canonical.encode()).hexdigest()[:20]

    @classmethod
    def from_definition(cls, data: Mapping[str, Any]) -> Image:
        """Parse (and validate) a definition; raises ValueError naming the problem."""
        if not isinstance(data, Mapping):
            raise ValueError("an image definition must be a JSON object")
        known = {"format", "python", "base", "packages", "commands", "env", "files"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"image definition: unknown field(s) {', '.join(unknown)}")
        if data.get("format", FORMAT) != FORMAT:
            raise ValueError(f"image definition: format {data.get('format')!r} is not supported")
        packages, commands, env = (
            data.get("packages") or [],
            data.get("commands") or [],
            data.get("env") or {},
        )
        if not isinstance(packages, list) or not isinstance(commands, list):
            raise ValueError("image definition: packages and commands must be lists")
        if not isinstance(env, dict):
            raise ValueError("image definition: env must be an object")
        base = data.get("base")
        if base is not None and not isinstance(base, str):
            raise ValueError("image definition: base must be a string")
        files = data.get("files") or []
        if not isinstance(files, list) or not all(
            isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f)
            for f in files
        ):
            raise ValueError('image definition: files must be a list of ["path", "sha256"]')
        return cls(
            python_version=str(data.get("python") or default_python()),
            base=base,
            packages=tuple(packages),
            commands=tuple(commands),
            environment=tuple(sorted((str(k), str(v)) for k, v in env.items())),
            files=tuple(LocalFile(dst, sha) for dst, sha in files),
        )
