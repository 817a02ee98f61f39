"""Functions whose image has a registry base, with a container engine on PATH: the image is
built from a generated Dockerfile, tagged by the image's hash, built once, and the worker
runs in it (named and labelled as every container worker).

No Docker engine can run on the test machines, so `docker` here is a stand-in for the docker
command line, first on PATH, as in tests/test_containers.py: it records every invocation;
`build` records the Dockerfile and tag and keeps the build context as the "image";
`image inspect` answers from those; `run` runs the command locally as the container would:
in a copy of the image's working directory (the COPY'd files), with the Dockerfile's ENV
lines, the `-e` variables, and `python` being this test's interpreter.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.conftest import TorporServer
from tests.test_containers import FakeDocker as _Recorder
from torpor.functions.containers import TAG_PREFIX, dockerfile
from torpor.functions.image import Image
from torpor.functions.loader import apps_in, load_module
from torpor.sdk import Client

FAKE_DOCKER = r'''#!{python}
"""Stand-in for the docker CLI (see tests/test_function_containers.py)."""
import json, os, secrets, shutil, signal, subprocess, sys
from pathlib import Path

STATE = Path({state!r})
IMAGES = STATE / "images"
CONTAINERS = STATE / "containers"
for d in (IMAGES, CONTAINERS):
    d.mkdir(parents=True, exist_ok=True)
VALUED = {{"--name", "--label", "--network", "-e", "--env", "-v", "--volume", "--gpus", "-t", "-f"}}


def record(**entry):
    with (STATE / "calls.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")


def image_dir(tag):
    return IMAGES / tag.replace(":", "_").replace("/", "_")


def options(args):
    opts, i = [], 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] in VALUED:
            opts.append((args[i], args[i + 1]))
            i += 2
        else:
            opts.append((args[i], None))
            i += 1
    return opts, args[i:]


def build(args):
    opts, rest = options(args)
    tag, file = dict(opts)["-t"], Path(dict(opts)["-f"])
    record(event="build", tag=tag, dockerfile=file.read_text())
    shutil.copytree(rest[0], image_dir(tag), dirs_exist_ok=True)
    return 0


def image(args):
    if args[0] != "inspect":
        return 1
    found = image_dir(args[1]).is_dir()
    if not found:
        sys.stderr.write(f"Error: No such image: {{args[1]}}\n")
    return 0 if found else 1


def run(args):
    opts, rest = options(args)
    tag, command = rest[0], rest[1:]
    root = image_dir(tag)
    env = {{}}
    for line in (root / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV ") and "=" in line and " " not in line[4:].split("=", 1)[0]:
            for item in line[4:].split(" "):
                name, _, value = item.partition("=")
                env[name] = json.loads(value) if value.startswith('"') else value
    for flag, value in opts:
        if flag in ("-e", "--env"):
            name, eq, given = value.partition("=")
            if eq:
                env[name] = given
            elif name in os.environ:
                env[name] = os.environ[name]
    env["PYTHONPATH"] = str(root)  # /torpor/lib: torpor/ of the build context
    env["PATH"] = os.environ["PATH"]
    name = dict(opts).get("--name", "c-" + secrets.token_hex(4))
    workdir = STATE / "work" / name
    shutil.copytree(root / "files", workdir, dirs_exist_ok=True)
    if command and command[0] == "python":
        command = [sys.executable, *command[1:]]
    child = subprocess.Popen(command, env=env, cwd=workdir, start_new_session=True)
    labels = dict(v.split("=", 1) for f, v in opts if f == "--label")
    (CONTAINERS / f"{{name}}.json").write_text(json.dumps(
        {{"name": name, "image": tag, "labels": labels, "pid": child.pid, "workdir": str(workdir)}}
    ))
    record(event="run", name=name, image=tag, gpus=[v for f, v in opts if f == "--gpus"])
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    code = child.wait()
    (CONTAINERS / f"{{name}}.json").unlink(missing_ok=True)
    return code


def rm(args):
    for ref in (a for a in args if not a.startswith("-")):
        path = CONTAINERS / f"{{ref}}.json"
        if path.exists():
            try:
                os.kill(json.loads(path.read_text())["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
            path.unlink(missing_ok=True)
    return 0


def ps(args):
    wanted = [args[i + 1].removeprefix("label=") for i, a in enumerate(args) if a == "--filter"]
    for path in CONTAINERS.glob("*.json"):
        c = json.loads(path.read_text())
        if all(c["labels"].get(w.split("=", 1)[0]) == w.split("=", 1)[1] for w in wanted):
            print(c["name"])
    return 0


argv = sys.argv[1:]
record(argv=argv)
handlers = {{"build": build, "image": image, "run": run, "rm": rm, "ps": ps}}
if not argv or argv[0] not in handlers:
    sys.stderr.write(f"fake docker: unsupported: {{argv}}\n")
    sys.exit(1)
sys.exit(handlers[argv[0]](argv[1:]))
'''

APP = """
import os
import pathlib

import torpor

HERE = pathlib.Path(__file__).parent
image = (
    torpor.Image.from_registry("python:3.11-slim")
    .pip_install("six")
    .env({"IMAGE_FLAG": "from-the-image"})
    .add_local_file(HERE / "words.txt", "data/words.txt")
)
app = torpor.App("boxed", image=image)


@app.function()
def where() -> dict:
    import torpor as t

    return {
        "cwd": os.getcwd(),
        "flag": os.environ.get("IMAGE_FLAG"),
        "words": pathlib.Path("data/words.txt").read_text(),
        "torpor": t.__file__,
    }
"""


class FakeDocker(_Recorder):
    def __init__(self, root: Path):
        super().__init__(root)
        exe = self.bin / "docker"
        exe.write_text(FAKE_DOCKER.format(python=sys.executable, state=str(self.state)))

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [c for c in self.calls() if c.get("event") == kind]


def load(path: Path) -> ModuleType:
    sys.modules.pop(path.stem, None)
    return load_module(path)


def test_dockerfile_of_a_registry_image() -> None:
    image = (
        Image.from_registry("pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime")
        .pip_install("transformers", "accelerate>=0.30")
        .run_commands("echo hi")
        .env({"HF_HOME": "/cache"})
    )
    text = dockerfile(image)
    assert text.startswith("FROM pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime\n")
    assert "RUN python -m pip install --no-cache-dir transformers 'accelerate>=0.30'" in text
    assert "RUN echo hi" in text and 'ENV HF_HOME="/cache"' in text
    assert "COPY files/" not in text  # no local files


def test_registry_image_built_once_and_worker_runs_in_it(
    server_factory: Any, tmp_path: Path
) -> None:
    docker = FakeDocker(tmp_path / "docker")
    server: TorporServer = server_factory(env=docker.env())
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "words.txt").write_text("in the box")
    path = tmp_path / "app" / "boxed_app.py"
    path.write_text(textwrap.dedent(APP))
    module = load(path)
    (app,) = apps_in(module)
    tag = TAG_PREFIX + module.image.id.removeprefix("im-")

    with Client(server.url, server.admin_key) as client:
        logs: list[str] = []
        app.deploy(client, on_log=logs.append)
        (build,) = docker.events("build")
        assert build["tag"] == tag
        assert build["dockerfile"].startswith("FROM python:3.11-slim\n")
        assert "pip install --no-cache-dir six" in build["dockerfile"]
        assert any(f"container image {tag}" in line for line in logs), logs
        assert client.get_deployment("boxed-where").options["container"] == tag

        out = module.where.remote()
        (run,) = docker.events("run")
        assert run["image"] == tag and run["name"].startswith("torpor-boxed-where-")
        assert out["flag"] == "from-the-image" and out["words"] == "in the box"
        work = docker.state / "work" / run["name"]
        assert Path(out["cwd"]) == work
        # The function server came from the image (its copy of torpor), not the host's.
        assert Path(out["torpor"]).is_relative_to(docker.state / "images")

        # An unchanged app: the image is found by its tag, nothing is built.
        logs.clear()
        apps_in(load(path))[0].deploy(client, on_log=logs.append)
        assert len(docker.events("build")) == 1
        assert any("built already" in line for line in logs), logs
        assert len([c for c in docker.invocations("image") if c["argv"][1] == "inspect"]) >= 2
    assert os.environ.get("IMAGE_FLAG") is None
