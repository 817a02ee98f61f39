"""Async requests end to end: a real `torpor serve` with the fake engine as worker processes.

Both submit forms, polling, cancel, 404s, key scoping, failures, signed webhooks (to a real
HTTP receiver on loopback), retention, and 50 requests surviving a SIGKILL of torpor."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TorporServer, fake_spec

MESSAGES = [{"role": "user", "content": "hello there"}]
ASYNC = {"X-Async": "true"}
FAST = {
    "TORPOR_CREATE_DEFAULT_DEPLOYMENT": "false",
    "TORPOR_ASYNC_POLL_INTERVAL_S": "0.2",
    "TORPOR_WEBHOOK_BACKOFF_BASE_S": "0.2",
}


def wait_request(
    c: httpx.Client, url: str, statuses: tuple[str, ...], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = c.get(url)
        assert r.status_code == 200, r.text
        view = dict(r.json())
        if view["status"] in statuses:
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never reached {statuses}; last: {view}")
        time.sleep(0.1)


def submit_chat(c: httpx.Client, model: str, **extra: Any) -> str:
    r = c.post(
        "/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, **extra},
        headers=ASYNC,
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "pending"
    return str(body["id"])


def content(view: dict[str, Any]) -> str:
    return str(view["response"]["choices"][0]["message"]["content"]).strip()


def new_key(srv: TorporServer, name: str, deployments: list[str]) -> str:
    with srv.api() as c:
        r = c.post("/api/keys", json={"name": name, "deployments": deployments})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorporServer]:
    # Webhooks here go to a receiver on loopback: the operator's allowance is needed
    # (tests/test_webhook_guard.py covers the refusal without it).
    env = {**FAST, "TORPOR_WEBHOOK_ALLOW_PRIVATE": "1"}
    server = TorporServer(tmp_path_factory.mktemp("async"), env).start()
    try:
        server.deploy(fake_spec("fake", engine_args="--tokens 5", max_workers=2))
        yield server
    finally:
        server.stop()
        assert server.survivors() == []


def test_x_async_and_deployment_form_poll_to_completion(srv: TorporServer) -> None:
    with srv.api() as c:
        rid = submit_chat(c, "fake")
        assert rid.startswith("req_")
        done = wait_request(c, f"/v1/requests/{rid}", ("completed", "failed"))
        assert done["status"] == "completed", done
        assert content(done) == "tok0 tok1 tok2 tok3 tok4"
        assert done["status_code"] == 200 and done["error"] is None
        assert done["deployment"] == "fake" and done["path"] == "/v1/chat/completions"
        assert done["created_at"] <= done["started_at"] <= done["finished_at"]

        # A stream submitted async runs non-streamed: the final JSON is stored.
        sid = submit_chat(c, "fake", stream=True, stream_options={"include_usage": True})
        streamed = wait_request(c, f"/v1/requests/{sid}", ("completed", "failed"))
        assert streamed["status"] == "completed", streamed
        assert streamed["response"]["object"] == "chat.completion"
        assert content(streamed) == "tok0 tok1 tok2 tok3 tok4"

        # The deployment form: {"input": ...} to a route of the deployment's workers.
        r = c.post(
            "/deployment/fake/v1/chat/completions",
            json={"input": {"messages": MESSAGES, "max_tokens": 2}},
        )
        assert r.status_code == 202, r.text
        did = r.json()["id"]
        assert r.json()["url"] == f"/deployment/fake/requests/{did}"
        view = wait_request(c, f"/deployment/fake/requests/{did}", ("completed", "failed"))
        assert view["status"] == "completed", view
        assert content(view) == "tok0 tok1"
        assert c.get(f"/v1/requests/{did}").json()["status"] == "completed"
        # Another deployment's path does not show it.
        assert c.get(f"/deployment/other/requests/{did}").status_code == 404

    # The official SDK can submit too (the 202 body read raw).
    raw = srv.openai().chat.completions.with_raw_response.create(
        model="fake",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers=ASYNC,
    )
    assert raw.status_code == 202
    sdk_id = json.loads(raw.text)["id"]
    with srv.api() as c:
        assert wait_request(c, f"/v1/requests/{sdk_id}", ("completed",))["status_code"] == 200


def test_unknown_ids_scoping_and_refusals(srv: TorporServer) -> None:
    other = new_key(srv, "other", ["fake"])
    with srv.api() as admin, srv.api(other) as c2:
        for method, url in (
            ("GET", "/v1/requests/req_nope"),
            ("DELETE", "/v1/requests/req_nope"),
            ("GET", "/deployment/fake/requests/req_nope"),
            ("DELETE", "/deployment/fake/requests/req_nope"),
        ):
            r = admin.request(method, url)
            assert r.status_code == 404, (method, url, r.text)
            assert r.json()["error"]["code"] == "not_found"

        mine = submit_chat(admin, "fake")
        theirs = submit_chat(c2, "fake")
        wait_request(admin, f"/v1/requests/{mine}", ("completed",))
        # Another key's request does not exist for this key; admin keys see everything.
        assert c2.get(f"/v1/requests/{mine}").status_code == 404
        assert c2.delete(f"/v1/requests/{mine}").status_code == 404
        assert c2.get(f"/deployment/fake/requests/{mine}").status_code == 404
        assert wait_request(c2, f"/v1/requests/{theirs}", ("completed",))["response"]
        assert admin.get(f"/v1/requests/{theirs}").status_code == 200
        listed = c2.get("/api/deployments/fake/async").json()
        assert {v["id"] for v in listed["data"]} == {theirs}
        assert {v["id"] for v in admin.get("/api/deployments/fake/async").json()["data"]} >= {
            mine,
            theirs,
        }

        # Unknown deployment: 404; a deployment the key may not use: 403; both before storing.
        r = admin.post("/v1/chat/completions", json={"model": "nope"}, headers=ASYNC)
        assert r.status_code == 404 and "error" in r.json()
        assert (
            admin.post("/deployment/nope/v1/chat/completions", json={"input": {}}).status_code
            == 404
        )
        limited = new_key(srv, "limited", ["somewhere-else"])
        with srv.api(limited) as c3:
            r = c3.post("/v1/chat/completions", json={"model": "fake"}, headers=ASYNC)
            assert r.status_code == 403
        r = admin.post(
            "/deployment/fake/v1/chat/completions",
            json={"input": {}, "webhook_url": "ftp://example.invalid/x"},
        )
        assert r.status_code == 400 and "webhook_url" in r.json()["error"]["message"]


def test_failures_are_surfaced(srv: TorporServer) -> None:
    srv.deploy(fake_spec("bad", engine_args="--fail-mode http400"))
    srv.deploy(fake_spec("broken", engine_args="--fail-mode http500"))
    with srv.api() as c:
        bad = submit_chat(c, "bad")
        broken = submit_chat(c, "broken")
        r = c.post("/deployment/fake/v1/no-such-route", json={"input": {"x": 1}})
        missing = r.json()["id"]

        view = wait_request(c, f"/v1/requests/{bad}", ("completed", "failed"))
        assert view["status"] == "failed" and view["status_code"] == 400
        # The engine's own error, in the OpenAI envelope's shape.
        assert view["error"]["code"] == "fake_bad_request"
        assert view["error"]["type"] == "invalid_request_error"

        view = wait_request(c, f"/v1/requests/{broken}", ("completed", "failed"))
        assert view["status"] == "failed" and view["status_code"] == 502
        assert view["error"]["code"] == "worker_error"
        assert view["error"]["message"] == "Worker error: fake engine failed on purpose"

        view = wait_request(c, f"/v1/requests/{missing}", ("completed", "failed"))
        assert view["status"] == "failed" and view["status_code"] == 404
        assert view["error"]["message"]


def test_cancel_pending_and_processing(srv: TorporServer) -> None:
    # One slot, 20 tokens of 1 s each: a request occupies it for 20 s unless cancelled.
    srv.deploy(
        fake_spec(
            "slow",
            engine_args="--tokens 20 --token-delay-ms 1000",
            concurrency=1,
            max_workers=1,
        )
    )
    with srv.api() as c:
        first = submit_chat(c, "slow")
        second = submit_chat(c, "slow")
        wait_request(c, f"/v1/requests/{first}", ("processing",))
        listing = c.get("/api/deployments/slow/async", params={"status": "pending"}).json()
        assert listing["queue_depth"] == 1 and listing["processing"] == 1
        assert [v["id"] for v in listing["data"]] == [second]

        r = c.delete(f"/v1/requests/{second}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        r = c.delete(f"/deployment/slow/requests/{first}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        cancelled_at = time.monotonic()

        # The running request was aborted: the single slot is free long before 20 s.
        quick = submit_chat(c, "slow", max_tokens=1)
        done = wait_request(c, f"/v1/requests/{quick}", ("completed", "failed"), timeout=15)
        assert done["status"] == "completed" and content(done) == "tok0"
        assert time.monotonic() - cancelled_at < 15

        for rid in (first, second):
            view = c.get(f"/v1/requests/{rid}").json()
            assert view["status"] == "cancelled" and view["error"]["code"] == "cancelled"
            assert view["response"] is None
        assert c.get(f"/v1/requests/{second}").json()["started_at"] is None
        # Ended requests cannot be cancelled.
        assert c.delete(f"/v1/requests/{quick}").status_code == 409
        bad = c.get("/api/deployments/slow/async", params={"status": "bogus"})
        assert bad.status_code == 400


def test_async_disabled_refuses_new_requests(srv: TorporServer) -> None:
    srv.deploy(fake_spec("noasync", async_enabled=False))
    with srv.api() as c:
        assert c.get("/api/deployments/noasync").json()["async_enabled"] is False
        r = c.post("/v1/chat/completions", json={"model": "noasync"}, headers=ASYNC)
        assert r.status_code == 403 and r.json()["error"]["code"] == "async_disabled"
        r = c.post("/deployment/noasync/v1/chat/completions", json={"input": {}})
        assert r.status_code == 403 and r.json()["error"]["code"] == "async_disabled"
        srv.patch("noasync", {"async_enabled": True})
        rid = submit_chat(c, "noasync")
        assert wait_request(c, f"/v1/requests/{rid}", ("completed",))["status_code"] == 200


class _Receiver:
    """A real HTTP server on loopback recording webhook deliveries; the first POST of each
    request id is answered 500 so that the retry is exercised."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes, int]] = []
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                rid = self.headers.get("X-Torpor-Request-Id", "")
                with receiver.lock:
                    status = 200 if rid in receiver.seen else 500
                    receiver.seen.add(rid)
                    receiver.deliveries.append((dict(self.headers.items()), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for h, b, status in self.deliveries if status == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_delivered_signed_and_retried(srv: TorporServer) -> None:
    receiver = _Receiver()
    try:
        with srv.api() as c:
            r = c.post(
                "/v1/chat/completions",
                json={"model": "fake", "messages": MESSAGES},
                headers={**ASYNC, "X-Webhook-Url": receiver.url},
            )
            assert r.status_code == 202, r.text
            first = r.json()["id"]
            r = c.post(
                "/deployment/fake/v1/chat/completions",
                json={"input": {"messages": MESSAGES}, "webhook_url": receiver.url},
            )
            second = r.json()["id"]

            deadline = time.monotonic() + 30
            while len(receiver.accepted()) < 2:
                assert time.monotonic() < deadline, f"deliveries: {receiver.deliveries}"
                time.sleep(0.1)

            secret = c.get("/api/keys/me/webhook-secret").json()["secret"]
            assert secret and c.get("/api/keys/me/webhook-secret").json()["secret"] == secret
            by_id = {}
            for headers, body in receiver.accepted():
                expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                assert hmac.compare_digest(headers["X-Torpor-Signature"], expected)
                wrong = hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()
                assert headers["X-Torpor-Signature"] != "sha256=" + wrong
                payload = json.loads(body)
                by_id[payload["id"]] = payload
                assert headers["X-Torpor-Delivery-Attempt"] == "2"
            assert set(by_id) == {first, second}
            for payload in by_id.values():
                assert payload["status"] == "completed"
                assert content(payload) == "tok0 tok1 tok2 tok3 tok4"

            view = wait_request(c, f"/v1/requests/{first}", ("completed",))
            deadline = time.monotonic() + 10
            while view["webhook"]["state"] != "delivered":
                assert time.monotonic() < deadline, view
                time.sleep(0.1)
                view = c.get(f"/v1/requests/{first}").json()
            assert view["webhook"]["attempts"] == 2
            assert view["webhook"]["last_error"] is None

        # Secrets are per key; a key reads only its own, admin keys any.
        other = new_key(srv, "hooks", ["fake"])
        with srv.api(other) as c2:
            own = c2.get("/api/keys/me/webhook-secret").json()
            assert own["secret"] != secret
            admins = [k["id"] for k in srv.api().get("/api/keys").json()["data"] if k["admin"]]
            assert c2.get(f"/api/keys/{admins[0]}/webhook-secret").status_code == 403
        with srv.api() as c:
            r = c.get(f"/api/keys/{own['key_id']}/webhook-secret")
            assert r.json()["secret"] == own["secret"]
    finally:
        receiver.close()


def test_results_deleted_after_retention(server_factory: Callable[..., TorporServer]) -> None:
    srv = server_factory(
        env={**FAST, "TORPOR_ASYNC_RETENTION_S": "1", "TORPOR_ASYNC_SWEEP_INTERVAL_S": "0.3"}
    )
    srv.deploy(fake_spec("fake"))
    with srv.api() as c:
        rid = submit_chat(c, "fake")
        wait_request(c, f"/v1/requests/{rid}", ("completed",))
        deadline = time.monotonic() + 20
        while c.get(f"/v1/requests/{rid}").status_code != 404:
            assert time.monotonic() < deadline, "result never deleted"
            time.sleep(0.2)


def test_fifty_requests_survive_sigkill(
    server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    data = tmp_path / "killed"
    first = server_factory(data_dir=data, env=FAST)
    # 2 workers x 2 slots: 4 in flight at once, each ~0.5 s, so 50 take several seconds.
    first.deploy(
        fake_spec(
            "batch",
            engine_args="--tokens 10 --token-delay-ms 50",
            concurrency=2,
            max_workers=2,
        )
    )
    ids: list[str] = []
    with first.api() as c:
        for i in range(50):
            r = c.post(
                "/deployment/batch/v1/chat/completions",
                json={"input": {"messages": [{"role": "user", "content": f"job {i}"}]}},
            )
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        deadline = time.monotonic() + 30
        while True:
            listing = c.get("/api/deployments/batch/async").json()
            if listing["processing"] > 0 and listing["queue_depth"] > 0:
                break
            assert time.monotonic() < deadline, listing
            time.sleep(0.05)
    first.stop(signal.SIGKILL)
    assert listing["counts"]["completed"] < 50

    again = server_factory(data_dir=data, env=FAST)
    with again.api() as c:
        views = [
            wait_request(c, f"/v1/requests/{rid}", ("completed", "failed"), 120) for rid in ids
        ]
        assert [v["status"] for v in views] == ["completed"] * 50
        assert all(content(v) == " ".join(f"tok{k}" for k in range(10)) for v in views)
        # The ones interrupted while processing ran again after the restart.
        assert any(v["attempts"] >= 2 for v in views)
        listing = c.get("/api/deployments/batch/async").json()
        assert listing["queue_depth"] == 0 and listing["processing"] == 0
        assert listing["counts"]["completed"] == 50


@pytest.mark.postgres
def test_async_on_postgres_survives_sigkill(
    server_factory: Callable[..., TorporServer], postgres_url: str
) -> None:
    env = {**FAST, "TORPOR_DATABASE_URL": postgres_url}
    first = server_factory(env=env)
    first.deploy(fake_spec("pg", engine_args="--tokens 4 --token-delay-ms 100", concurrency=1))
    with first.api() as c:
        ids = [submit_chat(c, "pg") for _ in range(6)]
        cancelled = ids.pop()
        assert c.delete(f"/v1/requests/{cancelled}").json()["status"] == "cancelled"
        wait_request(c, f"/v1/requests/{ids[0]}", ("processing", "completed"))
        assert c.get("/api/keys/me/webhook-secret").json()["secret"]
    first.stop(signal.SIGKILL)

    again = server_factory(data_dir=first.data_dir, env=env)
    with again.api() as c:
        views = [wait_request(c, f"/v1/requests/{rid}", ("completed", "failed"), 60) for rid in ids]
        assert [v["status"] for v in views] == ["completed"] * 5
        assert c.get(f"/v1/requests/{cancelled}").json()["status"] == "cancelled"
        counts = c.get("/api/deployments/pg/async").json()["counts"]
        assert counts["completed"] == 5 and counts["cancelled"] == 1
