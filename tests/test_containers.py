"""Container workers (`options.image`): named and labelled after their worker, given only
their worker's GPUs, removed by name when they stop and by label when an earlier torpor
left them behind.

No Docker engine can run on the test machines, so `docker` here is a test double of the
docker command line: a small Python script, first on PATH, that records every invocation
and emulates the engine's side with plain processes. `run` starts the command after the
image as a process of its own session (a container is not in the CLI's process group and
survives the CLI's SIGKILL), with only the `-e` variables, forwards SIGTERM to it as
`docker run` does, and keeps each container's name, labels and pid in a state directory;
`ps -a --filter label=K=V`, `rm -f NAME|ID` and `stop NAME` act on that state.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import ADMIN_KEY, TorporServer
from torpor.runtime.containers import instance_id
from torpor.spec import DeploymentSpec

FAKE_DOCKER = r'''#!{python}
"""Test double of the docker CLI (see tests/test_containers.py): no Docker engine here."""
import json, os, secrets, signal, subprocess, sys, time
from pathlib import Path

STATE = Path({state!r})
CONTAINERS = STATE / "containers"
CONTAINERS.mkdir(parents=True, exist_ok=True)
VALUED = {{"--name", "--label", "--network", "-e", "--env", "-v", "--volume", "--gpus"}}


def record(**entry):
    with (STATE / "calls.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")


def containers():
    for path in sorted(CONTAINERS.glob("*.json")):
        yield path, json.loads(path.read_text())


def find(ref):
    for path, c in containers():
        if ref in (c["name"], c["id"]):
            return path, c
    return None, None


def run(args):
    opts, i = [], 0
    while args[i].startswith("-"):
        if args[i] in VALUED:
            opts.append((args[i], args[i + 1]))
            i += 2
        else:
            opts.append((args[i], None))
            i += 1
    image, command = args[i], args[i + 1:]
    env = {{}}
    for flag, value in opts:
        if flag in ("-e", "--env"):
            name, eq, given = value.partition("=")
            if eq:
                env[name] = given
            elif name in os.environ:
                env[name] = os.environ[name]
    labels = dict(v.split("=", 1) for f, v in opts if f == "--label")
    name = next((v for f, v in opts if f == "--name"), "c-" + secrets.token_hex(4))
    if find(name)[0] is not None:
        sys.stderr.write(f"docker: Error response from daemon: Conflict: name {{name}}\n")
        return 125
    child = subprocess.Popen(command, env=env, start_new_session=True)
    state = CONTAINERS / f"{{name}}.json"
    state.write_text(json.dumps({{
        "id": secrets.token_hex(6), "name": name, "image": image, "labels": labels,
        "pid": child.pid, "env": env, "gpus": [v for f, v in opts if f == "--gpus"],
    }}))
    # docker run proxies signals to the container (--sig-proxy defaults to true).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    code = child.wait()
    if ("--rm", None) in opts:
        state.unlink(missing_ok=True)
    record(event="exited", name=name, code=code)
    return code


def rm(args):
    refs = [a for a in args if not a.startswith("-")]
    code = 0
    for ref in refs:
        path, c = find(ref)
        if path is None:
            sys.stderr.write(f"Error response from daemon: No such container: {{ref}}\n")
            code = 1
            continue
        try:
            os.kill(c["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
        path.unlink(missing_ok=True)
        record(event="removed", name=c["name"], pid=c["pid"])
        print(ref)
    return code


def ps(args):
    wanted = [args[i + 1].removeprefix("label=") for i, a in enumerate(args) if a == "--filter"]
    quiet = "-q" in args or "-aq" in args
    for _, c in containers():
        labels = c["labels"]
        if all(labels.get(w.split("=", 1)[0]) == w.split("=", 1)[1] for w in wanted):
            print(c["id"] if quiet else c["name"])
    return 0


def stop(args):
    for ref in (a for a in args if not a.startswith("-")):
        _, c = find(ref)
        if c is None:
            return 1
        os.kill(c["pid"], signal.SIGTERM)
    return 0


argv = sys.argv[1:]
record(argv=argv, env=sorted(os.environ), pid=os.getpid())
handlers = {{"run": run, "rm": rm, "ps": ps, "stop": stop}}
if not argv or argv[0] not in handlers:
    sys.stderr.write(f"fake docker: unsupported: {{argv}}\n")
    sys.exit(1)
sys.exit(handlers[argv[0]](argv[1:]))
'''


class FakeDocker:
    def __init__(self, root: Path):
        self.bin = root / "bin"
        self.state = root / "state"
        self.bin.mkdir(parents=True)
        exe = self.bin / "docker"
        exe.write_text(FAKE_DOCKER.format(python=sys.executable, state=str(self.state)))
        exe.chmod(0o755)

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", **extra}

    def calls(self) -> list[dict[str, Any]]:
        path = self.state / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def invocations(self, command: str) -> list[dict[str, Any]]:
        return [c for c in self.calls() if c.get("argv", [None])[0] == command]

    def container(self, name: str) -> dict[str, Any] | None:
        path = self.state / "containers" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def wait_removed(self, name: str, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for c in self.calls():
                if c.get("event") == "removed" and c["name"] == name:
                    return c
            time.sleep(0.05)
        raise AssertionError(f"{name} was never removed; calls: {self.invocations('rm')}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def image_spec(name: str, **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "framework": "custom",
        "options": {
            "image": "ghcr.io/acme/fake-engine:1",
            "command": f"{sys.executable} -m torpor.testing.fake_engine --port {{port}}",
            "health_path": "/health",
        },
        "idle_timeout_s": 300,
    }
    spec.update(fields)
    return spec


def _option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_container_workers_are_named_labelled_and_get_only_their_gpus(
    server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    docker = FakeDocker(tmp_path / "docker")
    srv = server_factory(env=docker.env(TORPOR_GPUS="2xA100-80GB", OPERATOR_SECRET="op-1"))
    srv.deploy(image_spec("boxed", gpus=1, min_workers=2, max_workers=2, env={"HF_TOKEN": "hf_x"}))
    dep = srv.wait_for("boxed", lambda d: d["ready_workers"] == 2)
    answer = srv.openai().chat.completions.create(
        model="boxed", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert answer.choices[0].message.content

    runs = {_option(c["argv"], "--name")[0]: c for c in docker.invocations("run")}
    instance = instance_id(srv.data_dir)
    gpus_seen = []
    for w in dep["workers"]:
        name = f"torpor-{w['id']}"
        argv = runs[name]["argv"]
        assert _option(argv, "--label") == [
            f"torpor.worker={w['id']}",
            f"torpor.instance={instance}",
        ]
        assert {"--rm", "--init"} <= set(argv)
        # One device, the worker's own: never "all".
        assert _option(argv, "--gpus") == [f"device={w['gpu_ids'][0]}"]
        assert len(w["gpu_ids"]) == 1
        gpus_seen.append(w["gpu_ids"][0])
        # The command line and the container get none of torpor's environment.
        assert not [
            n for n in runs[name]["env"] if n.startswith("TORPOR_") and n != "TORPOR_WORKER_ID"
        ]
        assert "OPERATOR_SECRET" not in runs[name]["env"]
        container = docker.container(name)
        assert container is not None and _alive(container["pid"])
        assert container["env"]["HF_TOKEN"] == "hf_x"
        assert container["env"]["TORPOR_WORKER_ID"] == w["id"]
        assert ADMIN_KEY not in container["env"].values()
        # Inside, devices are numbered from 0: the host's ids must not follow them in.
        assert "CUDA_VISIBLE_DEVICES" not in container["env"]
    assert sorted(gpus_seen) == [0, 1]

    with srv.api() as c:
        assert c.delete("/api/deployments/boxed").status_code < 300
    for w in dep["workers"]:
        name = f"torpor-{w['id']}"
        removed_by_name = [c for c in docker.invocations("rm") if c["argv"] == ["rm", "-f", name]]
        assert removed_by_name, docker.invocations("rm")
        assert docker.container(name) is None


def test_a_container_left_by_a_killed_torpor_is_removed_at_the_next_start(
    server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    docker = FakeDocker(tmp_path / "docker")
    data = tmp_path / "data"
    env = docker.env()
    first = server_factory(data_dir=data, env=env)
    first.deploy(image_spec("boxed", min_workers=1, max_workers=1))
    dep = first.wait_for("boxed", lambda d: d["ready_workers"] == 1)
    old = f"torpor-{dep['workers'][0]['id']}"
    container = docker.container(old)
    assert container is not None
    # A CPU container: no --gpus, and the GPUs stay hidden.
    run = next(c["argv"] for c in docker.invocations("run") if old in c["argv"])
    assert "--gpus" not in run and "NVIDIA_VISIBLE_DEVICES=void" in run
    assert container["env"]["CUDA_VISIBLE_DEVICES"] == ""

    first.stop(signal.SIGKILL)
    # The CLI dies with torpor; the container does not (that is the problem solved here).
    cli_pid = dep["workers"][0]["pid"]
    assert _wait_gone(cli_pid)
    assert _alive(container["pid"])

    second = server_factory(data_dir=data, env=env)
    removed = docker.wait_removed(old)
    assert removed["pid"] == container["pid"]
    assert _wait_gone(container["pid"])
    # Found by this data dir's label (one look per torpor process, at its first need).
    looks = [c["argv"] for c in docker.invocations("ps")]
    assert len(looks) == 2
    assert all(
        _option(a, "--filter") == [f"label=torpor.instance={instance_id(data)}"] for a in looks
    )

    # The deployment comes back with a new container, which the clean-up left alone.
    again = second.wait_for("boxed", lambda d: d["ready_workers"] == 1)
    new = f"torpor-{again['workers'][0]['id']}"
    assert new != old
    fresh = docker.container(new)
    assert fresh is not None and _alive(fresh["pid"])
    assert not [c for c in docker.calls() if c.get("event") == "removed" and c["name"] == new]


def test_a_spec_env_cannot_send_torpor_names_into_a_container(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docker = FakeDocker(tmp_path / "docker")
    monkeypatch.setenv("PATH", docker.env()["PATH"])
    from torpor.engines.custom import CustomEngine

    spec = DeploymentSpec.model_validate(
        image_spec("boxed", env={"TORPOR_ADMIN_KEY": "x", "TORPOR_WORKER_ID": "y", "A": "1"})
    )
    argv = list(CustomEngine().launch(spec, None).argv)
    assert argv[0] == str(docker.bin / "docker")
    assert _option(argv, "-e") == [
        "NVIDIA_VISIBLE_DEVICES=void",
        "A", "CUDA_VISIBLE_DEVICES", "FURIOSA_DEVICES", "PYTHONUNBUFFERED", "TORPOR_WORKER_ID",
    ]  # fmt: skip
