"""Stored Responses state in the database: a conversation continued with
`previous_response_id`, read and deleted with `GET`/`DELETE /v1/responses/{id}`, per key,
across a restart of torpor; rows past the retention are deleted."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import fake_spec
from tests.test_trust import make_key
from torpor.auth import ApiKey
from torpor.gateway.state import Stored, StoredState, VideoJob
from torpor.store import open_store


def _engine_messages(srv: Any, name: str) -> list[dict[str, Any]]:
    port = srv.get(name)["workers"][0]["port"]
    last = httpx.get(f"http://127.0.0.1:{port}/stats").json()["last_request"]
    return list(last["messages"])


def test_responses_survive_a_restart_per_key(server_factory: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = server_factory(data_dir=data)
    first.deploy(fake_spec("chat", min_workers=1, engine_args="--tokens 3"))
    first.wait_for("chat", lambda d: d["ready_workers"] >= 1)
    key = make_key(first, ["chat"])
    other = make_key(first, ["chat"])
    client = first.openai(key)
    one = client.responses.create(model="chat", input="first question", instructions="Be short")
    two = client.responses.create(model="chat", input="second", previous_response_id=one.id)
    assert two.output_text == "tok0 tok1 tok2 "
    first.stop()
    assert first.survivors() == []

    second = server_factory(data_dir=data)
    second.wait_for("chat", lambda d: d["ready_workers"] >= 1)
    client = second.openai(key)
    # Read back from the database by the key that made it; another key does not see it.
    got = client.responses.retrieve(two.id)
    assert got.id == two.id and got.output_text == two.output_text
    with pytest.raises(openai.NotFoundError):
        second.openai(other).responses.retrieve(two.id)
    with pytest.raises(openai.NotFoundError):
        second.openai(other).responses.create(model="chat", input="x", previous_response_id=two.id)
    # The conversation goes on after the restart with its whole history (a turn's
    # `instructions` are not carried over, as OpenAI documents).
    three = client.responses.create(model="chat", input="third", previous_response_id=two.id)
    assert three.previous_response_id == two.id
    messages = _engine_messages(second, "chat")
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "first question"),
        ("assistant", "tok0 tok1 tok2 "),
        ("user", "second"),
        ("assistant", "tok0 tok1 tok2 "),
        ("user", "third"),
    ]
    # Deleted by its key only, and gone for good.
    with pytest.raises(openai.NotFoundError):
        second.openai(other).responses.delete(one.id)
    client.responses.delete(one.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(one.id)


def test_stored_responses_expire_after_the_retention(server_factory: Any) -> None:
    srv = server_factory(
        env={"TORPOR_STORED_STATE_RETENTION_S": "1", "TORPOR_ASYNC_SWEEP_INTERVAL_S": "0.2"}
    )
    srv.deploy(fake_spec("chat", min_workers=1))
    srv.wait_for("chat", lambda d: d["ready_workers"] >= 1)
    client = srv.openai()
    made = client.responses.create(model="chat", input="hello")
    assert client.responses.retrieve(made.id).id == made.id
    deadline = time.monotonic() + 10
    while True:
        try:
            client.responses.retrieve(made.id)
        except openai.NotFoundError:
            break
        assert time.monotonic() < deadline, "never swept"
        time.sleep(0.1)


async def test_sweep_deletes_only_what_is_past_the_retention(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    state = StoredState(store.engine, lambda: now)
    key = ApiKey(id="k1", name="k", admin=False, deployments=None)
    try:
        await state.responses.put("resp_old", Stored("k1", {"id": "resp_old"}, [], "chat"))
        await state.videos.record(VideoJob("video_old", "k1", "clips", "w1"))
        now += timedelta(hours=2)
        await state.responses.put("resp_new", Stored("k1", {"id": "resp_new"}, [], "chat"))
        assert await state.sweep(retention_s=3600) == 2
        assert await state.responses.get(key, "resp_old") is None
        assert await state.videos.get("video_old") is None
        kept = await state.responses.get(key, "resp_new")
        assert kept is not None and kept.deployment == "chat"
        stranger = ApiKey(id="k2", name="s", admin=False, deployments=None)
        assert await state.responses.get(stranger, "resp_new") is None
        assert not await state.responses.delete(stranger, "resp_new")
        assert await state.responses.delete(key, "resp_new")
    finally:
        await store.close()
