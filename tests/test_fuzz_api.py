"""A bounded fuzz run of the control API: every operation of `/openapi.json`, driven by
schemathesis with the admin key, against a real `torpor serve`; no response may be a 5xx.

Run alone: `.venv/bin/pytest -q -p no:cacheprovider tests/test_fuzz_api.py`. The run is
deterministic, so a failure repeats; its report (each failing request as a curl command)
is the assertion message.

schemathesis runs as its own process (its CLI, `python -m schemathesis.cli run`): its
coverage phase (boundary and invalid values) and its fuzzing phase, positive and negative,
with the one check that matters here, `not_a_server_error`.

So that operations reach real objects instead of a 404, path parameters are pinned to
objects made before the run: reads and async submits to the fake deployment `fake`,
patches to `patchme` (a custom deployment whose command does not exist: a patch that
asks for a thousand workers starts no process), key and conversation operations to keys
and conversations of their own (deletes to separate ones, so that reads and patches keep a
target), async request operations to requests submitted before the run.

What the fuzzer may do to the host is kept small: the server runs with an empty PATH (a
`custom` command the fuzzer makes up finds no program; the fake engine is started by its
absolute path), Hugging Face offline, and no default llama.cpp deployment.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import TorporServer, fake_spec

# Examples per operation and phase; the whole test takes about a minute on two cores.
MAX_EXAMPLES = 150
SEED = 20240610


@dataclass(frozen=True)
class Targets:
    """Objects the pinned path parameters name."""

    key: str
    key_to_delete: str
    conversation: str
    conversation_to_delete: str
    request: str
    request_to_cancel: str
    request_to_cancel_by_deployment: str


def pinned(names: list[str], **params: str) -> str:
    quoted = ", ".join(f'"{n}"' for n in names)
    values = ", ".join(f'"{k.replace("__", ".")}" = "{v}"' for k, v in params.items())
    return f"[[operations]]\ninclude-name = [{quoted}]\nparameters = {{ {values} }}\n"


def config_for(t: Targets) -> str:
    deployment_reads = [
        f"GET /api/deployments/{{name}}{tail}"
        for tail in ("", "/events", "/workers", "/async", "/metrics")
    ]
    return "\n".join(
        [
            f"[generation]\nmax-examples = {MAX_EXAMPLES}\ndeterministic = true\n"
            'database = "none"\n',
            "[phases.stateful]\nenabled = false\n",
            # Not fuzzed: deleting the one deployment would turn every later case against
            # it into a plain 404; an image build runs the definition's commands and
            # installs its packages (its validation has tests of its own).
            "[[operations]]\n"
            'include-name = ["DELETE /api/deployments/{name}", "POST /api/images"]\n'
            "enabled = false\n",
            # A followed log never ends: it is read without following.
            pinned(["GET /api/deployments/{name}/logs"], path__name="fake", query__follow="false"),
            pinned(deployment_reads, path__name="fake"),
            pinned(["PATCH /api/deployments/{name}"], path__name="patchme"),
            pinned(["POST /deployment/{name}/{route}"], path__name="fake"),
            pinned(
                ["GET /deployment/{name}/requests/{request_id}"],
                path__name="fake",
                path__request_id=t.request,
            ),
            pinned(
                ["DELETE /deployment/{name}/requests/{request_id}"],
                path__name="fake",
                path__request_id=t.request_to_cancel_by_deployment,
            ),
            pinned(["GET /v1/requests/{request_id}"], path__request_id=t.request),
            pinned(["DELETE /v1/requests/{request_id}"], path__request_id=t.request_to_cancel),
            pinned(
                ["PATCH /api/keys/{key_id}", "GET /api/keys/{key_id}/webhook-secret"],
                path__key_id=t.key,
            ),
            pinned(["DELETE /api/keys/{key_id}"], path__key_id=t.key_to_delete),
            pinned(
                ["GET /api/conversations/{conv_id}", "PATCH /api/conversations/{conv_id}"],
                path__conv_id=t.conversation,
            ),
            pinned(["DELETE /api/conversations/{conv_id}"], path__conv_id=t.conversation_to_delete),
        ]
    )


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorporServer]:
    empty = tmp_path_factory.mktemp("empty-path")
    server = TorporServer(
        tmp_path_factory.mktemp("fuzz"),
        env={
            "PATH": str(empty),
            "HF_HUB_OFFLINE": "1",
            "TORPOR_CREATE_DEFAULT_DEPLOYMENT": "false",
        },
    ).start()
    try:
        yield server
    finally:
        server.stop()
        assert server.survivors() == [], "workers outlived torpor"


def make_targets(server: TorporServer) -> Targets:
    server.deploy(fake_spec("fake"))
    server.deploy(
        {
            "name": "patchme",
            "framework": "custom",
            "options": {"command": "/nonexistent/torpor-fuzz-engine --port {port}"},
        }
    )
    with server.api() as api:

        def created(path: str, body: dict[str, object], status: int = 201) -> str:
            r = api.post(path, json=body)
            assert r.status_code == status, r.text
            return str(r.json()["id"])

        async_path = "/deployment/fake/v1/chat/completions"
        chat = {"input": {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}}
        return Targets(
            key=created("/api/keys", {"name": "fuzz"}),
            key_to_delete=created("/api/keys", {"name": "fuzz-delete"}),
            conversation=created("/api/conversations", {"deployment": "fake"}),
            conversation_to_delete=created("/api/conversations", {"deployment": "fake"}),
            request=created(async_path, chat, 202),
            request_to_cancel=created(async_path, chat, 202),
            request_to_cancel_by_deployment=created(async_path, chat, 202),
        )


def test_fuzz_finds_no_server_error(fuzz_server: TorporServer, tmp_path: Path) -> None:
    url = fuzz_server.url
    # The schema needs a key (it names every admin route): refused without one.
    assert httpx.get(url + "/openapi.json").status_code == 401
    config = tmp_path / "schemathesis.toml"
    config.write_text(config_for(make_targets(fuzz_server)))
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{url}/openapi.json",
            "--header",
            f"Authorization: Bearer {fuzz_server.admin_key}",
            "--checks",
            "not_a_server_error",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--output-truncate",
            "false",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    report = proc.stdout + proc.stderr
    (tmp_path / "schemathesis.out").write_text(report)  # kept with pytest's tmp dirs
    assert proc.returncode == 0, report[-20000:]
    # It really ran: every operation but the two left out, and many cases.
    selected, total = (int(n) for n in report.split("Selected: ")[1].split()[0].split("/"))
    assert selected == total - 2, report[-5000:]
    assert f"Tested: {selected}" in report, report[-5000:]
    generated = int(report.split(" generated, ")[0].rsplit(maxsplit=1)[-1])
    assert generated > 1000, report[-5000:]
    print(f"fuzz run: {generated} cases in {elapsed:.0f} s")

    # The fixture survived: the deployments are there, no unhandled error was logged.
    with fuzz_server.api() as api:
        assert api.get("/api/deployments/fake").status_code == 200
        assert api.get("/api/deployments/patchme").status_code == 200
    assert "unhandled error" not in fuzz_server.log(), fuzz_server.log()[-6000:]
