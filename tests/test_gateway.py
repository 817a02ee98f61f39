"""The gateway end to end with the fake engine as real worker processes: errors, holds,
streaming, keys, live edits and rollouts. Model speed does not matter here."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import TorporServer, fake_spec

MESSAGES = [{"role": "user", "content": "hello there"}]


def chat(srv: TorporServer, model: str, **kw: object) -> str:
    resp = srv.openai().chat.completions.create(model=model, messages=MESSAGES, **kw)  # type: ignore[call-overload]
    return str(resp.choices[0].message.content).strip()


def test_chat_and_stream_through_both_base_urls(server: TorporServer) -> None:
    server.deploy(fake_spec("fake", engine_args="--tokens 5"))
    assert chat(server, "fake") == "tok0 tok1 tok2 tok3 tok4"

    per_deployment = openai.OpenAI(
        base_url=f"{server.url}/openai/fake/v1", api_key=server.admin_key, max_retries=0
    )
    stream = per_deployment.chat.completions.create(
        model="anything",
        messages=MESSAGES,
        stream=True,  # type: ignore[arg-type]
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip() == "tok0 tok1 tok2 tok3 tok4"
    assert [m.id for m in per_deployment.models.list()] == ["fake"]
    assert {m.id for m in server.openai().models.list()} >= {"fake", "smollm2"}


def test_error_envelopes(server: TorporServer) -> None:
    server.deploy(fake_spec("bad400", engine_args="--fail-mode http400", min_workers=1))
    server.deploy(fake_spec("bad500", engine_args="--fail-mode http500", min_workers=1))
    for name in ("bad400", "bad500"):
        server.wait_for(name, lambda d: d["status"] == "ready")
    client = server.openai()

    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert "Deployment not found or not running" in str(nf.value)

    # The engine's own 400 body is relayed verbatim.
    with pytest.raises(openai.BadRequestError) as br:
        client.chat.completions.create(model="bad400", messages=MESSAGES)  # type: ignore[arg-type]
    assert br.value.code == "fake_bad_request"

    with pytest.raises(openai.APIStatusError) as bad_gateway:
        client.chat.completions.create(model="bad500", messages=MESSAGES)  # type: ignore[arg-type]
    assert bad_gateway.value.status_code == 502
    # The engine's reason, and no advice to retry what will fail the same way again.
    assert "Worker error: fake engine failed on purpose" in str(bad_gateway.value)

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()

    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "fake"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"

    r = httpx.post(
        server.url + "/v1/chat/completions",
        content=b'{"model": "bad400", "messages": [',
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    assert r.status_code == 400
    assert "Malformed JSON" in r.json()["error"]["message"]

    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={"messages": MESSAGES},
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    assert r.status_code == 400 and "'model' is required" in r.json()["error"]["message"]


def test_queue_full_gives_429_and_wait_timeout_gives_504(server: TorporServer) -> None:
    # One slot, a queue of one, and a slow engine: the third concurrent request is refused.
    server.deploy(
        fake_spec(
            "busy",
            engine_args="--tokens 1 --first-token-delay-ms 1500",
            min_workers=1,
            max_workers=1,
            concurrency=1,
            max_queue=1,
        )
    )
    server.wait_for("busy", lambda d: d["status"] == "ready")
    results: list[object] = []

    def call() -> None:
        try:
            results.append(chat(server, "busy"))
        except openai.APIStatusError as exc:
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    server.wait_for("busy", lambda d: d["queue"]["waiting"] == 1 and d["queue"]["inflight"] == 1)
    with pytest.raises(openai.RateLimitError) as rl:
        chat(server, "busy")
    assert "Server busy, please retry" in str(rl.value)
    assert rl.value.response.headers.get("retry-after") == "1"
    for t in threads:
        t.join()
    assert results == ["tok0", "tok0"]

    # A worker that takes longer to boot than the request may wait: 504.
    server.deploy(fake_spec("slowboot", engine_args="--startup-delay-ms 3000", wait_time_s=0.5))
    server.wait_for("slowboot", lambda d: d["state"] == "running")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as gw:
        chat(server, "slowboot")
    assert gw.value.status_code == 504
    assert "A worker is still starting, please retry shortly" in str(gw.value)
    assert time.monotonic() - started < 2.5
    # The worker keeps booting and then serves.
    server.wait_for("slowboot", lambda d: d["status"] == "ready", timeout=15)
    assert chat(server, "slowboot").startswith("tok0")


def test_stream_held_through_cold_start_gets_keepalives(server: TorporServer) -> None:
    server.deploy(fake_spec("cold", engine_args="--startup-delay-ms 1200 --tokens 3"))
    server.wait_for("cold", lambda d: d["status"] == "scaled_to_zero")
    lines: list[tuple[float, str]] = []
    start = time.monotonic()
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json={"model": "cold", "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                lines.append((time.monotonic() - start, line))
    comments = [(t, line) for t, line in lines if line.startswith(":")]
    data = [line for _, line in lines if line.startswith("data:")]
    # Comments arrive while the worker boots (>1.2 s), before any data.
    assert comments and comments[0][0] < 0.5
    assert len(comments) >= 2
    assert lines.index(comments[-1]) < lines.index(next(x for x in lines if x[1] == data[0]))
    assert data[-1] == "data: [DONE]"
    text = "".join(
        json.loads(d[6:])["choices"][0]["delta"].get("content") or ""
        for d in data[:-1]
        if json.loads(d[6:])["choices"]
    )
    assert text.strip() == "tok0 tok1 tok2"


def test_stream_is_passed_through_chunk_by_chunk_and_abort_reaches_engine(
    server: TorporServer,
) -> None:
    server.deploy(
        fake_spec("slowstream", engine_args="--tokens 40 --token-delay-ms 100", min_workers=1)
    )
    dep = server.wait_for("slowstream", lambda d: d["status"] == "ready")
    engine = f"http://127.0.0.1:{dep['workers'][0]['port']}"

    arrivals: list[float] = []
    start = time.monotonic()
    stream = server.openai().chat.completions.create(
        model="slowstream",
        messages=MESSAGES,
        stream=True,  # type: ignore[arg-type]
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - start)
        if len(arrivals) == 5:
            break
    stream.close()  # the client hangs up mid-generation
    # Tokens arrived one by one, not buffered until the end (40 tokens take 4 s).
    assert arrivals[-1] < 2.0
    assert arrivals[-1] - arrivals[0] > 0.25

    deadline = time.monotonic() + 3
    stats = httpx.get(engine + "/stats").json()
    while stats["disconnected"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = httpx.get(engine + "/stats").json()
    assert stats["disconnected"] == 1
    assert stats["completed"] == 0
    assert time.monotonic() - start < 3.0
    server.wait_for("slowstream", lambda d: d["queue"]["inflight"] == 0, timeout=5)


def test_keys_scope_and_admin_routes(server: TorporServer) -> None:
    server.deploy(fake_spec("open"))
    server.deploy(fake_spec("secret"))
    with server.api() as admin:
        r = admin.post("/api/keys", json={"name": "app", "deployments": ["open"]})
        assert r.status_code == 201
        body = r.json()
        key, key_id = body["key"], body["id"]
        listed = admin.get("/api/keys").json()["data"]
        assert key not in json.dumps(listed)  # stored hashed, never shown again
        assert any(k["id"] == key_id and k["deployments"] == ["open"] for k in listed)

    assert chat(TorporServerKey(server, key), "open").startswith("tok0")
    with pytest.raises(openai.PermissionDeniedError):
        chat(TorporServerKey(server, key), "secret")
    assert [m.id for m in server.openai(key).models.list()] == ["open"]

    with server.api(key) as app:
        assert app.get("/api/deployments/open").status_code == 200
        assert app.get("/api/deployments/secret").status_code == 404
        for method, path in [
            ("POST", "/api/keys"),
            ("GET", "/api/keys"),
            ("POST", "/api/deployments"),
            ("DELETE", "/api/deployments/open"),
            ("PATCH", "/api/deployments/open"),
            ("GET", "/api/deployments/open/logs"),
        ]:
            r = app.request(method, path, json={})
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["error"]["type"] == "permission_error"

    with server.api() as admin:
        assert admin.delete(f"/api/keys/{key_id}").json() == {"id": key_id, "revoked": True}
    with pytest.raises(openai.AuthenticationError):
        server.openai(key).models.list()


class TorporServerKey(TorporServer):
    """The same server seen through another key."""

    def __init__(self, srv: TorporServer, key: str):
        self.__dict__.update(srv.__dict__)
        self.admin_key = key


def test_spec_validation_messages(server: TorporServer) -> None:
    with server.api() as c:
        cases = [
            ({"name": "-bad", "model": "x"}, "name: must be 1-63 characters"),
            ({"name": "a" * 64, "model": "x"}, "name: must be 1-63 characters"),
            ({"name": "ok", "model": "x", "min_workers": -1}, "min_workers"),
            ({"name": "ok", "model": "x", "min_workers": 3, "max_workers": 2}, "max_workers"),
            (
                {"name": "ok", "model": "x", "options": {"nope": 1}},
                "options: llama.cpp has no option 'nope'",
            ),
            ({"name": "ok", "framework": "tensorflow"}, "framework: must be one of"),
            ({"name": "ok", "model": "x", "colour": "red"}, "colour: unknown field"),
        ]
        for spec, fragment in cases:
            r = c.post("/api/deployments", json=spec)
            assert r.status_code == 422, spec
            assert fragment in r.json()["error"]["message"], r.json()
        c.post("/api/deployments", json=fake_spec("dup")).raise_for_status()
        assert c.post("/api/deployments", json=fake_spec("dup")).status_code == 409
        r = c.patch("/api/deployments/dup", json={"max_workers": 0})
        assert r.status_code == 422 and "max_workers" in r.json()["error"]["message"]
        r = c.patch("/api/deployments/dup", json={"name": "other"})
        assert r.status_code == 422 and "name: cannot be changed" in r.json()["error"]["message"]
        assert c.get("/api/deployments/nope").status_code == 404


def test_crash_loop_shows_error_with_exit_code_and_log_lines(server: TorporServer) -> None:
    server.deploy(fake_spec("crashy", engine_args="--fail-mode crash-on-start", min_workers=1))
    dep = server.wait_for("crashy", lambda d: d["status"] == "error", timeout=30)
    assert dep["last_error"]["exit_code"] == 3
    assert any("crashing on purpose" in line for line in dep["last_error"]["log_tail"])
    assert "crash loop" in dep["reason"]
    failed = [w for w in dep["workers"] if w["state"] == "failed"]
    assert len(failed) >= 3
    assert dep["workers"][0]["state"] in ("failed", "provisioning")  # failing workers first
    assert max(w["restarts"] for w in dep["workers"]) >= 2
    # A request while it crash-loops fails visibly instead of hanging for wait_time_s.
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        chat(server, "crashy")
    assert err.value.status_code == 502
    assert time.monotonic() - started < 10


def test_logs_are_prefixed_and_follow_streams(server: TorporServer) -> None:
    server.deploy(fake_spec("logged", min_workers=2, max_workers=2))
    dep = server.wait_for("logged", lambda d: d["ready_workers"] == 2)
    ids = {w["id"] for w in dep["workers"]}
    with server.api() as c:
        text = c.get("/api/deployments/logged/logs").text
        for wid in ids:
            assert f"[{wid}] fake engine ready on port" in text
        one = sorted(ids)[0]
        only = c.get("/api/deployments/logged/logs", params={"worker": one}).text
        assert only and all(line.startswith(f"[{one}] ") for line in only.splitlines())
        assert c.get("/api/deployments/logged/logs", params={"worker": "x"}).status_code == 404

        seen: list[str] = []
        with c.stream("GET", "/api/deployments/logged/logs", params={"follow": 1, "tail": 0}) as r:
            # A restart of the deployment's workers writes new lines while we follow.
            server_patch = threading.Thread(
                target=server.patch, args=("logged", {"env": {"MARK": "1"}})
            )
            server_patch.start()
            for line in r.iter_lines():
                seen.append(line)
                if "fake engine ready" in line:
                    break
            server_patch.join()
    assert any(line.startswith("[logged-") and "fake engine ready" in line for line in seen)


def test_session_affinity_pins_a_worker(server: TorporServer) -> None:
    server.deploy(fake_spec("sticky", min_workers=2, max_workers=2, concurrency=4))
    server.wait_for("sticky", lambda d: d["ready_workers"] == 2)
    client = server.openai()

    def worker_for(session: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="sticky",
            messages=MESSAGES,
            extra_headers={"X-Session-Id": session},  # type: ignore[arg-type]
        )
        return str(raw.headers["x-torpor-worker"])

    for session in ("alice", "bob", "carol"):
        first = worker_for(session)
        assert all(worker_for(session) == first for _ in range(5))
    # Without a session, load spreads over both workers.
    with ThreadPoolExecutor(8) as pool:
        seen = set(pool.map(lambda _: worker_for_none(client), range(16)))
    assert len(seen) == 2


def worker_for_none(client: openai.OpenAI) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model="sticky",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    return str(raw.headers["x-torpor-worker"])


def _traffic(srv: TorporServer, model: str, stop: threading.Event, out: list[object]) -> None:
    client = srv.openai()
    while not stop.is_set():
        try:
            resp = client.chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]
            out.append(str(resp.choices[0].message.content).strip())
        except Exception as exc:
            out.append(exc)


def test_live_edit_and_rolling_update_lose_no_request(server: TorporServer) -> None:
    server.deploy(
        fake_spec(
            "rolling", engine_args="--tokens 2 --token-delay-ms 20", min_workers=1, max_workers=2
        )
    )
    before = server.wait_for("rolling", lambda d: d["status"] == "ready")
    old_ids = {w["id"] for w in before["workers"]}
    stop, out = threading.Event(), []
    threads = [
        threading.Thread(target=_traffic, args=(server, "rolling", stop, out)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        live = server.patch("rolling", {"concurrency": 2, "max_queue": 50, "description": "edited"})
        assert live["spec_version"] == before["spec_version"]  # no restart for live fields
        assert {w["id"] for w in live["workers"] if w["state"] == "healthy"} == old_ids
        time.sleep(0.5)
        rolled = server.patch(
            "rolling", {"env": {"GENERATION": "2"}, "framework_args": ["--tokens", "3"]}
        )
        assert rolled["spec_version"] == before["spec_version"] + 1
        after = server.wait_for(
            "rolling",
            lambda d: (
                d["ready_workers"] >= 1
                and all(
                    w["spec_version"] == rolled["spec_version"]
                    for w in d["workers"]
                    if w["state"] in ("healthy", "provisioning", "draining")
                )
            ),
            timeout=30,
        )
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    errors = [o for o in out if not isinstance(o, str)]
    assert errors == []
    assert len(out) > 20
    assert "tok0 tok1" in out and "tok0 tok1 tok2" in out  # served by both generations
    new_ids = {w["id"] for w in after["workers"] if w["state"] == "healthy"}
    assert new_ids and not (new_ids & old_ids)
    assert after["description"] == "edited" and after["concurrency"] == 2


def test_delete_removes_workers_and_files(server: TorporServer) -> None:
    server.deploy(fake_spec("gone", min_workers=1))
    dep = server.wait_for("gone", lambda d: d["status"] == "ready")
    pid = dep["workers"][0]["pid"]
    workdir = server.data_dir / "deployments" / "gone"
    assert workdir.exists()
    with server.api() as c:
        assert c.delete("/api/deployments/gone").json() == {"name": "gone", "deleted": True}
        assert c.get("/api/deployments/gone").status_code == 404
    assert not workdir.exists()
    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(openai.NotFoundError):
        chat(server, "gone")
