"""A worker that lets a request time out is checked by health probes, not blind-suspended:
a frozen engine (SIGSTOP: no answer at all, its health route included) is failed and
replaced; an engine that hangs one request but answers its health route is kept."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import openai
import pytest

from tests.conftest import TorporServer, fake_spec
from torpor.health import SuspectVerdict, judge_suspect
from torpor.runtime.base import ProbeResult

MESSAGES = [{"role": "user", "content": "hi"}]


def _events(srv: TorporServer, name: str) -> list[dict[str, Any]]:
    with srv.api() as c:
        return list(c.get(f"/api/deployments/{name}/events").json()["data"])


def test_judge_suspect_needs_failed_probes_in_a_row() -> None:
    ready = ProbeResult(exit_code=None, ready=True)
    silent = ProbeResult(exit_code=None, ready=False)
    ended = ProbeResult(exit_code=9, ready=False)
    assert judge_suspect(ready, 1, 2) is SuspectVerdict.RECOVERED
    assert judge_suspect(silent, 0, 2) is SuspectVerdict.PROBE_AGAIN
    assert judge_suspect(silent, 1, 2) is SuspectVerdict.UNRESPONSIVE
    assert judge_suspect(silent, 0, 1) is SuspectVerdict.UNRESPONSIVE
    assert judge_suspect(ended, 0, 2) is SuspectVerdict.ENDED


def test_frozen_worker_is_replaced_after_one_504(server_factory: Any) -> None:
    server = server_factory(env={"TORPOR_REQUEST_TIMEOUT_S": "3"})
    server.deploy(fake_spec("frozen", min_workers=1))
    dep = server.wait_for("frozen", lambda d: d["ready_workers"] >= 1)
    frozen = dep["workers"][0]
    os.killpg(os.getpgid(frozen["pid"]), signal.SIGSTOP)  # a hang: nothing answers
    client = server.openai(timeout=60)

    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="frozen", messages=MESSAGES)
    assert err.value.status_code == 504
    assert time.monotonic() - started < 5.0

    def replaced(d: dict[str, Any]) -> bool:
        old = next((w for w in d["workers"] if w["id"] == frozen["id"]), None)
        fresh = [w for w in d["workers"] if w["id"] != frozen["id"] and w["state"] == "healthy"]
        return old is not None and old["state"] == "failed" and bool(fresh)

    dep = server.wait_for("frozen", replaced, timeout=30)
    old = next(w for w in dep["workers"] if w["id"] == frozen["id"])
    assert "unresponsive" in old["reason"]
    states = [(e["state"], e["message"]) for e in _events(server, "frozen")]
    assert any(s == "suspect" and frozen["id"] in m for s, m in states)
    # The replacement answers.
    reply = client.chat.completions.create(model="frozen", messages=MESSAGES)
    assert reply.choices[0].message.content


def test_worker_that_answers_its_health_check_is_kept(server_factory: Any) -> None:
    server = server_factory(env={"TORPOR_REQUEST_TIMEOUT_S": "2"})
    server.deploy(fake_spec("slow", engine_args="--fail-mode hang", min_workers=1))
    dep = server.wait_for("slow", lambda d: d["ready_workers"] >= 1)
    worker = dep["workers"][0]["id"]
    with pytest.raises(openai.APIStatusError) as err:
        server.openai(timeout=30).chat.completions.create(model="slow", messages=MESSAGES)
    assert err.value.status_code == 504

    deadline = time.monotonic() + 20
    while not any(
        e["state"] == "healthy" and "kept" in e["message"] for e in _events(server, "slow")
    ):
        assert time.monotonic() < deadline, _events(server, "slow")
        time.sleep(0.1)
    dep = server.get("slow")
    assert [(w["id"], w["state"]) for w in dep["workers"]] == [(worker, "healthy")]
