"""The `torpor` command as a real subprocess against a real `torpor serve`."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import TorporServer, fake_spec
from torpor.spec import NAME_RULE

NAME = "cli-fake"
FAKE_COMMAND = fake_spec(NAME)["options"]["command"]


def cli_env(**extra: str) -> dict[str, str]:
    """The caller's env without TORPOR_* settings, wide enough that tables never wrap."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORPOR_")}
    env.update(COLUMNS="250", NO_COLOR="1", TERM="dumb")
    env.update(extra)
    return env


def torpor(
    *args: str, env: dict[str, str], input: str | None = None, check: int | None = 0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "torpor", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check is not None:
        assert proc.returncode == check, (
            f"torpor {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def server_env(server: TorporServer) -> dict[str, str]:
    return cli_env(TORPOR_URL=server.url, TORPOR_API_KEY=server.admin_key)


def test_help_lists_commands() -> None:
    out = torpor("--help", env=cli_env()).stdout
    for command in ("serve", "deploy", "update", "ls", "get", "logs", "events", "rm", "keys"):
        assert re.search(rf"\b{command}\b", out), f"{command} missing from --help:\n{out}"
    keys_help = torpor("keys", "--help", env=cli_env()).stdout
    for command in ("create", "ls", "revoke"):
        assert command in keys_help


def test_unreachable_server() -> None:
    env = cli_env(TORPOR_URL="http://127.0.0.1:9", TORPOR_API_KEY="tp-x")
    proc = torpor("ls", env=env, check=1)
    assert "cannot reach torpor" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_workflow(server: TorporServer) -> None:
    env = server_env(server)

    out = torpor(
        "deploy", NAME, "--framework", "custom",
        "--option", f"command={FAKE_COMMAND}", "--option", "health_path=/health",
        "--min-workers", "1", "--idle-timeout", "300", "--description", "from the cli",
        env=env,
    ).stdout  # fmt: skip
    assert f"created deployment {NAME}" in out
    assert f"{server.url}/openai/{NAME}/v1" in out
    created = server.get(NAME)
    assert created["framework"] == "custom"
    assert created["options"] == {"command": FAKE_COMMAND, "health_path": "/health"}
    assert created["min_workers"] == 1
    assert created["description"] == "from the cli"

    # Creating it again is refused with a hint, not a traceback.
    again = torpor(
        "deploy", NAME, "--framework", "custom", "--option", f"command={FAKE_COMMAND}",
        env=env, check=1,
    )  # fmt: skip
    assert "already exists" in again.stderr

    listing = torpor("ls", env=env).stdout
    assert "NAME" in listing
    assert re.search(rf"^\s*{NAME}\s+custom\b", listing, re.M), listing
    assert "smollm2" in listing

    ready = server.wait_for(NAME, lambda d: d["status"] == "ready", timeout=30)
    worker_id = ready["workers"][0]["id"]

    shown = json.loads(torpor("get", NAME, "--json", env=env).stdout)
    assert shown["name"] == NAME
    assert shown["state"] == "running"
    assert shown["status"] == "ready"
    panel = torpor("get", NAME, env=env).stdout
    assert NAME in panel
    assert worker_id in panel

    out = torpor("update", NAME, "--max-workers", "3", env=env).stdout
    assert f"updated deployment {NAME}" in out
    assert server.get(NAME)["max_workers"] == 3
    out = torpor(
        "deploy", NAME, "--update", "--framework", "custom",
        "--option", f"command={FAKE_COMMAND}", "--concurrency", "2", env=env,
    ).stdout  # fmt: skip
    assert f"updated deployment {NAME}" in out
    assert server.get(NAME)["concurrency"] == 2
    nothing = torpor("update", NAME, env=env, check=1)
    assert "nothing to change" in nothing.stderr

    logs = torpor("logs", NAME, "--tail", "50", env=env).stdout.splitlines()
    assert logs, "no log lines"
    assert all(line.startswith(f"[{NAME}-") for line in logs), logs
    assert any(line.startswith(f"[{worker_id}] ") and "fake engine ready" in line for line in logs)
    one = torpor("logs", NAME, "--worker", worker_id, "--tail", "1", env=env).stdout.splitlines()
    assert len(one) == 1 and one[0].startswith(f"[{worker_id}] ")

    events = torpor("events", NAME, env=env).stdout
    assert "running" in events
    assert "healthy" in events

    # A key limited to this deployment.
    made = torpor("keys", "create", "ci", "--deployment", NAME, env=env)
    secret = made.stdout.strip()
    assert re.fullmatch(r"tp-\S+", secret), made.stdout
    match = re.search(r"id (key_[0-9a-f]+)", made.stderr)
    assert match, made.stderr
    key_id = match.group(1)
    assert f"scope: {NAME}" in made.stderr

    with server.api(secret) as api:
        assert api.get(f"/api/deployments/{NAME}").status_code == 200
        assert api.get("/api/deployments/smollm2").status_code == 404
        assert [d["name"] for d in api.get("/api/deployments").json()["data"]] == [NAME]
        r = api.post("/api/keys", json={"name": "escalate"})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["message"]

    key_list = torpor("keys", "ls", env=env).stdout
    row = next((line for line in key_list.splitlines() if key_id in line), None)
    assert row is not None, key_list
    assert re.search(rf"\bci\b.*\b{NAME}\b.*\bno\b", row), row
    assert secret not in key_list

    out = torpor("keys", "revoke", key_id, env=env).stdout
    assert f"revoked key {key_id}" in out
    with server.api(secret) as api:
        assert api.get(f"/api/deployments/{NAME}").status_code == 401
    twice = torpor("keys", "revoke", key_id, env=env, check=1)
    assert "already revoked" in twice.stderr

    # Without --yes, answering no keeps the deployment.
    torpor("rm", NAME, env=env, input="n\n", check=1)
    assert server.get(NAME)["name"] == NAME

    out = torpor("rm", NAME, "--yes", env=env).stdout
    assert f"deleted deployment {NAME}" in out
    with server.api() as api:
        r = api.get(f"/api/deployments/{NAME}")
        assert r.status_code == 404
        assert r.json()["error"]["message"]
    missing = torpor("get", NAME, env=env, check=1)
    assert "not found" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["Bad_Name", "--framework", "custom", "--option", f"command={FAKE_COMMAND}"],
        ["--framework", "custom", "--option", f"command={FAKE_COMMAND}", "--", "-bad"],
    ],
    ids=["uppercase", "leading-hyphen"],
)
def test_deploy_invalid_name(server: TorporServer, args: list[str]) -> None:
    proc = torpor("deploy", *args, env=server_env(server), check=1)
    assert NAME_RULE in " ".join(proc.stderr.split()), proc.stderr
    assert "Traceback" not in proc.stderr
    with server.api() as api:
        names = [d["name"] for d in api.get("/api/deployments").json()["data"]]
    assert names == ["smollm2"]


def test_admin_key_file(server_factory: Callable[..., TorporServer], tmp_path: Path) -> None:
    server = server_factory(env={"TORPOR_ADMIN_KEY": ""})
    key_file = server.data_dir / "admin.key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secret = key_file.read_text().strip()
    assert secret.startswith("tp-")
    assert secret in server.log()  # shown once on first start

    with server.api(secret) as api:
        assert api.get("/api/keys").status_code == 200
    with server.api() as api:  # the fixture's default key was not registered
        assert api.get("/api/deployments").status_code == 401

    # No TORPOR_API_KEY: the CLI reads <data_dir>/admin.key.
    env = cli_env(TORPOR_URL=server.url, TORPOR_DATA_DIR=str(server.data_dir))
    assert "smollm2" in torpor("ls", env=env).stdout

    # Another data dir has no key file: the server refuses the anonymous call.
    other = cli_env(TORPOR_URL=server.url, TORPOR_DATA_DIR=str(tmp_path / "elsewhere"))
    proc = torpor("ls", env=other, check=1)
    assert "API key" in proc.stderr


def test_global_options_after_command(server: TorporServer) -> None:
    """--url/--api-key may follow the command; after --arg they are engine arguments."""
    env = cli_env()
    listing = torpor("ls", "--url", server.url, f"--api-key={server.admin_key}", env=env).stdout
    assert "smollm2" in listing
    torpor(
        "deploy", "args-dep", "--framework", "custom", "--option", f"command={FAKE_COMMAND}",
        "--arg", "--url", "--arg", "http://x", "--url", server.url,
        "--api-key", server.admin_key, env=env,
    )  # fmt: skip
    dep = server.get("args-dep")
    assert dep["framework_args"] == ["--url", "http://x"]
    assert dep["min_workers"] == 0


def test_deploy_update_partial_fields(server: TorporServer) -> None:
    env = server_env(server)
    server.deploy(fake_spec("partial"))
    out = torpor("deploy", "partial", "--update", "--concurrency", "2", env=env).stdout
    assert "updated deployment partial" in out
    assert server.get("partial")["concurrency"] == 2
