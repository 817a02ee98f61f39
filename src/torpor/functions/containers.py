"""Container images for functions: an `Image` with a registry base, where docker or podman
is on PATH, is built from a generated Dockerfile and tagged `torpor-fn:<image id>`, so the
same definition is built once (`image inspect` finds it) and every worker runs in it.

The Dockerfile starts from the base, installs the packages with the base's pip, runs the
commands, sets the variables, copies the image's local files into the working directory
(`/torpor/work`, where the function server runs) and torpor's function server (standard
library only) to `/torpor/lib`. Workers are started by the custom engine's container path
(`torpor.engines.custom`): named and labelled after the worker, given only its GPUs.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import torpor
from torpor.functions.image import Image, write_files

TAG_PREFIX = "torpor-fn:"
WORKDIR = "/torpor/work"
LIB_DIR = "/torpor/lib"
# The interpreter a container image runs the function server with (the base's own).
PYTHON = "python"
# What of torpor the function server needs in the container (standard library only).
SERVER_MODULES = ("__init__.py", "functions/__init__.py", "functions/app.py",
                  "functions/gpu.py", "functions/image.py", "functions/server.py",
                  "funcproto/__init__.py", "funcproto/pickling.py",
                  "funcproto/routes.py")  # fmt: skip

Log = Callable[[str], None]
Run = Callable[[list[str], Log], Awaitable[int]]


def tag_for(image: Image) -> str:
    return TAG_PREFIX + image.id.removeprefix("im-")


def dockerfile(image: Image) -> str:
    """The Dockerfile of an image with a registry base (pure)."""
    if not image.base:
        raise ValueError("only an image with a registry base is built as a container")
    lines = [f"FROM {image.base}", "ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1"]
    if image.packages:
        packages = " ".join(shlex.quote(p) for p in image.packages)
        lines.append(f"RUN {PYTHON} -m pip install --no-cache-dir {packages}")
    lines += [f"RUN {command}" for command in image.commands]
    lines += [f"ENV {name}={json.dumps(value)}" for name, value in image.environment]
    lines += [f"WORKDIR {WORKDIR}", f"COPY torpor/ {LIB_DIR}/torpor/"]
    if image.files:
        lines.append(f"COPY files/ {WORKDIR}/")
    lines.append(f"ENV PYTHONPATH={LIB_DIR}")
    return "\n".join(lines) + "\n"


def write_context(root: Path, image: Image, files: Mapping[str, bytes]) -> None:
    """The build context: the Dockerfile, torpor's function server and the local files."""
    (root / "Dockerfile").write_text(dockerfile(image))
    package = Path(torpor.__file__).resolve().parent
    for name in SERVER_MODULES:
        target = root / "torpor" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package / name, target)
    write_files(root / "files", files)
    (root / "files").mkdir(exist_ok=True)


class ContainerBuilder:
    """Builds and finds function images through the docker (or podman) command line."""

    def __init__(self, exe: str, run: Run):
        self.exe = exe
        self._run = run  # runs a command line, streaming its output to the log; exit code

    async def cached(self, image: Image) -> bool:
        code = await self._run([self.exe, "image", "inspect", tag_for(image)], lambda _: None)
        return code == 0

    async def build(self, image: Image, files: Mapping[str, bytes], log: Log) -> float:
        """Build the image; the seconds it took. Raises RuntimeError naming the failure."""
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="torpor-build-") as tmp:
            context = Path(tmp)
            write_context(context, image, files)
            argv = [self.exe, "build", "-t", tag_for(image), "-f", str(context / "Dockerfile")]
            code = await self._run([*argv, str(context)], log)
        if code != 0:
            raise RuntimeError(f"`{self.exe} build` of {image.base} exited with {code}")
        return round(time.monotonic() - started, 3)
