"""The `torpor` command as a real subprocess against a real `torpor serve`."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
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
    for command in (
        "serve",
        "deploy",
        "update",
        "ls",
        "get",
        "logs",
        "events",
        "rm",
        "keys",
        "chat",
    ):
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

    # Without --yes, answering no keeps the deployment, and says how to delete anyway.
    kept = torpor("rm", NAME, env=env, input="n\n", check=1)
    assert "--yes" in kept.stderr
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


def test_cli_finds_a_server_by_each_documented_means(
    server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    """A server on a non-default port with its own data dir (its admin.key generated there):
    the README's ways to point the CLI at it all work, and failures say which URL and which
    key (from where) were used."""
    data_dir = tmp_path / "elsewhere-data"
    server = server_factory(data_dir=data_dir, env={"TORPOR_ADMIN_KEY": ""})
    assert server.port != 8000
    secret = (data_dir / "admin.key").read_text().strip()
    home = tmp_path / "home"  # no ~/.torpor there: nothing found by accident
    home.mkdir()
    base = cli_env(HOME=str(home))

    ways = {
        "flags before": (["--url", server.url, "--data-dir", str(data_dir), "ls"], base),
        "flags after": (["ls", "--url", server.url, "--data-dir", str(data_dir)], base),
        "env data dir": (["ls"], {**base, "TORPOR_URL": server.url, "TORPOR_DATA_DIR": str(data_dir)}),
        "env key": (["ls"], {**base, "TORPOR_URL": server.url, "TORPOR_API_KEY": secret}),
        "flag key": (["ls", "--url", server.url, "--api-key", secret], base),
    }  # fmt: skip
    for way, (args, env) in ways.items():
        proc = torpor(*args, env=env, check=None)
        assert proc.returncode == 0, f"{way}: {proc.stderr}"
        assert re.search(r"^\s*smollm2\s", proc.stdout, re.M), f"{way}: {proc.stdout}"

    # A stale key (another server's): the error names the URL and where the key came from.
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "admin.key").write_text("tp-another-servers-key-0123456789\n")
    proc = torpor("ls", "--url", server.url, "--data-dir", str(stale), env=base, check=1)
    message = " ".join(proc.stderr.split())
    assert "Invalid API key" in message
    assert server.url in message and str(stale / "admin.key") in message
    assert "--api-key" in message and "TORPOR_API_KEY" in message
    proc = torpor(
        "ls", env={**base, "TORPOR_URL": server.url, "TORPOR_API_KEY": "tp-nope"}, check=1
    )
    assert "key from TORPOR_API_KEY" in " ".join(proc.stderr.split())

    # No key anywhere: the CLI's own options, not the HTTP header, are the hint.
    proc = torpor("ls", "--url", server.url, env=base, check=1)
    message = " ".join(proc.stderr.split())
    assert "no API key" in message and str(home / ".torpor" / "admin.key") in message
    assert "--api-key" in message and "--data-dir" in message
    assert "Authorization" not in message

    # A wrong URL names where it came from.
    proc = torpor(
        "ls", env={**base, "TORPOR_URL": "http://127.0.0.1:9", "TORPOR_API_KEY": secret}, check=1
    )
    message = " ".join(proc.stderr.split())
    assert "cannot reach torpor at http://127.0.0.1:9" in message and "TORPOR_URL" in message
    assert "Traceback" not in proc.stderr


def test_json_output_ids_work_with_revoke(server: TorporServer) -> None:
    env = server_env(server)
    made = torpor("keys", "create", "scripted", "--deployment", "smollm2", env=env)
    secret = made.stdout.strip()
    keys = json.loads(torpor("keys", "ls", "-o", "json", env=env).stdout)
    mine = [k for k in keys if k["name"] == "scripted"]
    assert len(mine) == 1 and mine[0]["revoked_at"] is None
    key_id = mine[0]["id"]
    assert secret not in json.dumps(keys)

    # An 80-column table still shows whole ids (copyable), the other columns give way.
    narrow = torpor("keys", "ls", env={**env, "COLUMNS": "80"}).stdout
    assert key_id in narrow, narrow
    assert all(len(line) <= 80 for line in narrow.splitlines()), narrow

    torpor("keys", "revoke", key_id, env=env)
    keys = json.loads(torpor("keys", "ls", "--output", "json", env=env).stdout)
    assert next(k for k in keys if k["id"] == key_id)["revoked_at"] is not None

    listing = json.loads(torpor("ls", "-o", "json", env=env).stdout)
    assert [d["name"] for d in listing] == ["smollm2"]
    assert listing[0]["framework"] == "llama.cpp"
    events = json.loads(torpor("events", "smollm2", "-o", "json", env=env).stdout)
    assert events and all("kind" in e for e in events)
    for window in ("1h", "7d", "30d"):
        usage = json.loads(torpor("usage", "--window", window, "-o", "json", env=env).stdout)
        assert usage[-1]["deployment"] == "TOTAL"
    bad = torpor("usage", "--window", "2w", env=env, check=2)
    assert "1h, 6h, 24h, 7d, 30d" in " ".join(bad.stderr.split())
    inventory = json.loads(torpor("gpus", "-o", "json", env=env).stdout)
    assert inventory["devices"] == [] and [n["node"] for n in inventory["nodes"]] == ["local"]


def test_engine_default_concurrency_and_worker_endpoints(server: TorporServer) -> None:
    env = server_env(server)
    torpor("deploy", "tiny", "--model", "smollm2-135m-instruct", env=env)
    assert server.get("tiny")["concurrency"] == 1  # llama.cpp answers one request at a time
    torpor("deploy", "tiny4", "--model", "smollm2-135m-instruct", "--concurrency", "4", env=env)
    assert server.get("tiny4")["concurrency"] == 4
    torpor(
        "deploy", NAME, "--framework", "custom", "--option", f"command={FAKE_COMMAND}",
        "--min-workers", "1", env=env,
    )  # fmt: skip
    assert server.get(NAME)["concurrency"] == 4
    dep = server.wait_for(NAME, lambda d: d["status"] == "ready", timeout=30)
    port = dep["workers"][0]["port"]
    panel = torpor("get", NAME, env=env).stdout
    assert f"http://127.0.0.1:{port}" in panel, panel
    assert "1 ready" in panel

    # A key that is not an admin's gets the caller view: no endpoint column.
    secret = torpor("keys", "create", "viewer", "--deployment", NAME, env=env).stdout.strip()
    view = torpor("get", NAME, env={**env, "TORPOR_API_KEY": secret}).stdout
    assert "ENDPOINT" not in view and f":{port}" not in view


def test_rm_without_a_terminal_and_logs_follow_ends_with_the_deployment(
    server: TorporServer,
) -> None:
    env = server_env(server)
    server.deploy(fake_spec("followed", min_workers=1))
    server.wait_for("followed", lambda d: d["status"] == "ready", timeout=30)

    # No terminal and no --yes: refused with the flag to use, nothing deleted.
    proc = subprocess.run(
        [sys.executable, "-m", "torpor", "rm", "followed"],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1 and "--yes" in proc.stderr, proc.stderr
    assert server.get("followed")["name"] == "followed"

    follower = subprocess.Popen(
        [sys.executable, "-m", "torpor", "logs", "followed", "-f", "--tail", "5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()
        assert first.startswith("[followed-"), first
        started = time.monotonic()
        torpor("rm", "followed", "--yes", env=env)
        _out, err = follower.communicate(timeout=20)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err
    assert "deployment followed was deleted" in err
    assert time.monotonic() - started < 20


def _worker_stats(server: TorporServer, name: str) -> dict[str, Any]:
    port = server.get(name)["workers"][0]["port"]
    return dict(httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json())


def test_chat_streams_an_answer_in_order(server: TorporServer) -> None:
    """`torpor chat` prints the tokens as they arrive, in order, and sends the system message
    and max_tokens it was given."""
    server.deploy(fake_spec("talk", engine_args="--tokens 8 --token-delay-ms 250", min_workers=1))
    server.wait_for("talk", lambda d: d["status"] == "ready", timeout=30)
    proc = subprocess.Popen(
        [sys.executable, "-m", "torpor", "chat", "talk", "Count, please.",
         "--system", "Be brief.", "--max-tokens", "5"],
        env=server_env(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
    )  # fmt: skip
    arrivals: list[tuple[float, bytes]] = []
    try:
        assert proc.stdout is not None
        while piece := os.read(proc.stdout.fileno(), 4096):
            arrivals.append((time.monotonic(), piece))
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = b"".join(piece for _, piece in arrivals).decode()
    assert text == "tok0 tok1 tok2 tok3 tok4 \n"
    # Streamed: the tokens came in several reads spread over the engine's delays (4 x 250 ms),
    # not all at once at the end.
    assert len(arrivals) >= 3, arrivals
    assert arrivals[-1][0] - arrivals[0][0] >= 0.6, arrivals
    seen = ""
    for _, piece in arrivals:  # each read continues the text so far
        seen += piece.decode()
        assert text.startswith(seen)
    sent = _worker_stats(server, "talk")["last_request"]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Count, please."},
    ]
    assert sent["max_tokens"] == 5 and sent["stream"] is True and sent["model"] == "talk"

    # --no-stream, with the prompt read from standard input.
    out = torpor("chat", "talk", "-", "--no-stream", env=server_env(server), input="From stdin.")
    assert out.stdout == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 \n"
    sent = _worker_stats(server, "talk")["last_request"]
    assert sent["messages"] == [{"role": "user", "content": "From stdin."}]
    assert sent["stream"] is False and "max_tokens" not in sent

    empty = torpor("chat", "talk", "-", env=server_env(server), input="  \n", check=1)
    assert "prompt is empty" in empty.stderr


def test_chat_errors_name_the_cause(server: TorporServer) -> None:
    env = server_env(server)
    missing = torpor("chat", "no-such-deployment", "Hi", env=env, check=1)
    assert "no-such-deployment" in missing.stderr and "Traceback" not in missing.stderr
    assert missing.stdout == ""

    # Held during a cold start (the stream has begun with keep-alives), then the engine
    # fails: the error event ends the answer with a message and exit status 1.
    server.deploy(
        fake_spec("talk-fails", engine_args="--startup-delay-ms 1000 --fail-mode http500")
    )
    failed = torpor("chat", "talk-fails", "Hi", env=env, check=1)
    assert failed.stderr.startswith("error: ") and "Traceback" not in failed.stderr
    assert len(failed.stderr.strip()) > len("error: ")

    stale = torpor("chat", "talk-fails", "Hi", env={**env, "TORPOR_API_KEY": "tp-nope"}, check=1)
    message = " ".join(stale.stderr.split())
    assert "Invalid API key" in message and "key from TORPOR_API_KEY" in message
