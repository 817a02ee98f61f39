"""`torpor.Image`: a content-addressed definition of a worker's environment.

An image is data: a base (a registry image, or none), a Python version, pip packages,
shell commands and environment variables. Its id is a hash of that data, so the same
definition is built once and reused by every worker and deploy; any change (a package
added, a version pinned) is another image. Builders live elsewhere
(`torpor.functions.builder` for virtual environments on the local runtime).

Standard library only: this module is imported inside workers too.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

FORMAT = 1
_VERSION_RE = re.compile(r"^3\.\d{1,2}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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

    def __post_init__(self) -> None:
        if not _VERSION_RE.match(self.python_version):
            raise ValueError(f"python version must look like 3.11, got {self.python_version!r}")
        for name, _ in self.environment:
            if not _ENV_RE.match(name):
                raise ValueError(f"image env: invalid variable name {name!r}")
        for item in (*self.packages, *self.commands):
            if not isinstance(item, str) or not item.strip():
                raise ValueError("image packages and commands must be non-empty strings")

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
        known = {"format", "python", "base", "packages", "commands", "env"}
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
        return cls(
            python_version=str(data.get("python") or default_python()),
            base=base,
            packages=tuple(packages),
            commands=tuple(commands),
            environment=tuple(sorted((str(k), str(v)) for k, v in env.items())),
        )
