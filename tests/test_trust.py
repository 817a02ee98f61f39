"""Trust boundaries of the gateway and the control API (issue 10): what a scoped key can
reach on a worker, what it can read about a deployment, the env admin key, body limits and
the unauthenticated routes. Every test runs a real `torpor serve` and real workers."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, REPO, TorporServer, fake_spec, free_port
from torpor.auth import ApiKey
from torpor.engines import FRAMEWORKS
from torpor.errors import BadRequest, Forbidden
from torpor.paths import check_path, check_route

RECORDER = REPO / "tests" / "path_recorder.py"


def recorder_spec(name: str, record: Path, **fields: Any) -> dict[str, Any]:
    command = f"{sys.executable} {RECORDER} {{port}} {record}"
    spec: dict[str, Any] = {
        "name": name,
        "framework": "custom",
        "options": {"command": command, "health_path": "/health"},
        "env": {"HF_TOKEN": "hf_secret_value"},
    }
    spec.update(fields)
    return spec


def raw_request(
    srv: TorporServer, method: str, path: str, key: str, body: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    """Send `path` exactly as written (httpx would normalise dot segments away)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            parsed = {"raw": data.decode(errors="replace")}
        return resp.status, parsed
    finally:
        conn.close()


def make_key(srv: TorporServer, deployments: list[str] | None = None) -> str:
    with srv.api() as admin:
        r = admin.post("/api/keys", json={"name": "caller", "deployments": deployments})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


def wait_ready(srv: TorporServer, name: str) -> dict[str, Any]:
    return srv.wait_for(name, lambda d: d["ready_workers"] >= 1, timeout=60)


# -- paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/../stats",
        "/v1/./models",
        "/openai/a/v1/../stats",
        "/openai/a/v1/%2e%2e/stats",
        "/openai/a/v1/%2E%2e/stats",
        "/openai/a/v1/.%2e/stats",
        "/openai/a/v1%2fchat",
        "/openai/a/v1/chat%5ccompletions",
        "/openai/a/v1\\..\\stats",
        "/v1//chat/completions",
        "//v1/models",
        "/api/deployments/../keys",
    ],
)
def test_check_path_refuses_dot_segments_encodings_and_empty_segments(path: str) -> None:
    from urllib.parse import unquote

    with pytest.raises(BadRequest):
        check_path(unquote(path), path.encode())


def test_check_path_accepts_normal_paths() -> None:
    for path in ["/", "/v1/chat/completions", "/openai/a/v1/models", "/assets/index-1.2.js"]:
        check_path(path, path.encode())


def test_dot_segments_are_refused_and_never_reach_the_worker(
    server: TorporServer, tmp_path: Path
) -> None:
    record = tmp_path / "paths.txt"
    server.deploy(recorder_spec("a", record, min_workers=1))
    wait_ready(server, "a")
    key = make_key(server, ["a"])
    attacks = [
        ("GET", "/openai/a/v1/../stats"),
        ("GET", "/openai/a/v1/%2e%2e/stats"),
        ("GET", "/openai/a/v1/%2E%2E/openapi.json"),
        ("GET", "/v1/../stats?model=a"),
        ("GET", "/openai/a/v1/..%2fdocs"),
        ("GET", "/openai/a/v1//../stats"),
        ("POST", "/deployment/a/v1/../stats"),
        ("POST", "/deployment/a/%2e%2e/stats"),
    ]
    for method, path in attacks:
        body = b'{"input": {}}' if method == "POST" else None
        for who in (key, ADMIN_KEY):
            status, parsed = raw_request(server, method, path, who, body)
            assert status == 400, (path, status, parsed)
            assert parsed["error"]["type"] == "invalid_request_error", parsed
    # A request through the normal route does arrive, so the record is live.
    status, _ = raw_request(server, "POST", "/openai/a/v1/chat/completions", key, b"{}")
    assert status == 200
    seen = record.read_text().splitlines()
    assert seen == ["POST /v1/chat/completions"], seen


def test_inference_keys_reach_only_declared_routes(server: TorporServer, tmp_path: Path) -> None:
    record = tmp_path / "paths.txt"
    spec = recorder_spec("a", record, min_workers=1)
    spec["options"]["routes"] = ["/v1/rerank"]
    server.deploy(spec)
    wait_ready(server, "a")
    key = make_key(server, ["a"])

    # Declared routes: the OpenAI ones and the one the custom server lists.
    assert raw_request(server, "POST", "/openai/a/v1/chat/completions", key, b"{}")[0] == 200
    assert raw_request(server, "POST", "/openai/a/v1/rerank", key, b"{}")[0] == 200
    # Anything else on the worker is admin-only, through every door.
    status, parsed = raw_request(server, "GET", "/openai/a/v1/internal/state", key)
    assert status == 403 and parsed["error"]["type"] == "permission_error", parsed
    status, _ = raw_request(server, "POST", "/deployment/a/stats", key, b'{"input": {}}')
    assert status == 403
    status, _ = raw_request(server, "POST", "/deployment/a/v1/internal", key, b'{"input": {}}')
    assert status == 403
    # The admin key reaches them.
    assert raw_request(server, "GET", "/openai/a/v1/internal/state", ADMIN_KEY)[0] == 200
    assert raw_request(server, "POST", "/deployment/a/stats", ADMIN_KEY, b'{"input": {}}')[0] == 202

    deadline = time.monotonic() + 20
    while "POST /stats" not in record.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = record.read_text().splitlines()
    assert "GET /v1/internal/state" in seen and "POST /stats" in seen
    assert seen.count("GET /v1/internal/state") == 1, seen  # the admin's, not the key's
    assert "POST /v1/internal" not in seen


def test_engine_control_routes_are_nobodys() -> None:
    admin = ApiKey(id="k1", name="admin", admin=True, deployments=None)
    caller = ApiKey(id="k2", name="app", admin=False, deployments=frozenset({"d"}))
    engines = {name: engine for name, engine in FRAMEWORKS.items()}
    controls = {
        "vllm": ["/sleep", "/wake_up", "/is_sleeping", "/collective_rpc"],
        "sglang": ["/release_memory_occupation", "/resume_memory_occupation"],
        "ollama": ["/api/pull", "/api/delete", "/api/create"],
    }
    for framework, routes in controls.items():
        engine = engines[framework]
        for route in routes:
            for key in (admin, caller):
                with pytest.raises(Forbidden, match="control route"):
                    check_route(key, "d", route, engine.routes, engine.control_routes)
        check_route(caller, "d", "/v1/chat/completions", engine.routes, engine.control_routes)
        with pytest.raises(Forbidden):
            check_route(caller, "d", "/metrics", engine.routes, engine.control_routes)
        check_route(admin, "d", "/metrics", engine.routes, engine.control_routes)


# -- what a scoped key reads ------------------------------------------------------------------


def test_scoped_key_gets_the_caller_view(server: TorporServer, tmp_path: Path) -> None:
    record = tmp_path / "paths.txt"
    server.deploy(recorder_spec("a", record, min_workers=1))
    wait_ready(server, "a")
    key = make_key(server, ["a"])

    admin_view = server.get("a")
    assert admin_view["env"] == {"HF_TOKEN": "hf_secret_value"}
    assert admin_view["workers"][0]["pid"] and admin_view["workers"][0]["port"]

    with server.api(key) as c:
        listed = c.get("/api/deployments").json()["data"]
        one = c.get("/api/deployments/a").json()
        workers = c.get("/api/deployments/a/workers").json()["data"]
        events = c.get("/api/deployments/a/events").json()["data"]
    for view in (listed[0], one):
        text = json.dumps(view)
        for secret in ("hf_secret_value", "HF_TOKEN", str(RECORDER), str(record), "127.0.0.1"):
            assert secret not in text, (secret, view)
        for field in ("env", "options", "framework_args", "model_path", "last_error", "command"):
            assert field not in view, field
        assert view["name"] == "a" and view["endpoint"] == "/openai/a/v1"
        assert view["status"] == "ready" and view["lifecycle"] == "active"
        assert view["ready_workers"] == 1 and view["max_workers"] == 1
        for w in view["workers"]:
            assert not {"pid", "port", "host", "reason"} & set(w), w
    assert workers and all("pid" not in w and "port" not in w for w in workers)
    assert events and all(e["message"] is None for e in events)
    assert str(admin_view["workers"][0]["pid"]) not in json.dumps(events)


# -- the env admin key -------------------------------------------------------------------------


def test_env_admin_key_survives_a_revoke_and_a_restart(
    server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    srv = server_factory(data)
    with srv.api() as admin:
        keys = admin.get("/api/keys").json()["data"]
        env_key = next(k for k in keys if k["admin"])
        assert len(env_key["prefix"]) <= min(8, len(ADMIN_KEY) // 3)
        assert ADMIN_KEY.startswith(env_key["prefix"])
        assert admin.delete(f"/api/keys/{env_key['id']}").status_code == 200
    with srv.api() as admin:
        assert admin.get("/api/keys").status_code == 401
    srv.stop()

    again = server_factory(data)  # the old code died here on a UNIQUE constraint
    with again.api() as admin:
        r = admin.get("/api/keys")
        assert r.status_code == 200, r.text
        assert any(k["id"] == env_key["id"] and k["revoked_at"] is None for k in r.json()["data"])


def test_short_env_admin_key_is_refused_at_start(tmp_path: Path) -> None:
    env = {
        **__import__("os").environ,
        "TORPOR_ADMIN_KEY": "short-key",
        "TORPOR_DATA_DIR": str(tmp_path / "data"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "torpor", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "TORPOR_ADMIN_KEY" in proc.stderr and "at least 24" in proc.stderr, proc.stderr


def test_generated_keys_list_a_short_prefix(server: TorporServer) -> None:
    key = make_key(server)
    with server.api() as admin:
        rows = admin.get("/api/keys").json()["data"]
    row = next(r for r in rows if r["name"] == "caller")
    assert 0 < len(row["prefix"]) <= 8 and key.startswith(row["prefix"])


# -- bodies -------------------------------------------------------------------------------------

SMALL = 64 * 1024


@pytest.fixture
def limited(server_factory: Callable[..., TorporServer]) -> TorporServer:
    return server_factory(
        env={
            "TORPOR_MAX_INFERENCE_BODY_BYTES": str(SMALL),
            "TORPOR_MAX_ASYNC_BODY_BYTES": str(SMALL),
            "TORPOR_MAX_API_BODY_BYTES": str(SMALL),
            "TORPOR_MAX_CONVERSATIONS_PER_KEY": "2",
        }
    )


def _oversize() -> bytes:
    filler = "x" * (2 * SMALL)
    return json.dumps({"input": {"messages": [{"role": "user", "content": filler}]}}).encode()


def test_every_body_route_is_bounded_after_authentication(limited: TorporServer) -> None:
    limited.deploy(fake_spec("a"))
    with limited.api() as admin:
        schema = admin.get("/openapi.json").json()
    body_routes = [
        (method.upper(), path)
        for path, ops in schema["paths"].items()
        for method in ops
        if method in ("post", "put", "patch")
    ]
    assert len(body_routes) >= 6, body_routes
    big = _oversize()
    fill = {"name": "a", "key_id": "me", "conv_id": "c", "request_id": "r", "route": "v1/x"}
    routes = [(m, p.format(**fill)) for m, p in body_routes]
    routes += [("POST", "/v1/chat/completions"), ("POST", "/openai/a/v1/chat/completions")]
    for method, path in routes:
        # Without a key: 401, whatever the size (the body is not read).
        r = httpx.request(method, limited.url + path, content=big, timeout=30)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        r = httpx.request(
            method,
            limited.url + path,
            content=big,
            headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 413, (method, path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "payload_too_large"


def test_stored_conversations_are_capped_per_key(limited: TorporServer) -> None:
    limited.deploy(fake_spec("a"))
    with limited.api() as admin:
        for _ in range(2):
            assert admin.post("/api/conversations", json={"deployment": "a"}).status_code == 201
        r = admin.post("/api/conversations", json={"deployment": "a"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "quota_exceeded", r.text


# -- routes without a key -----------------------------------------------------------------------


def test_metrics_docs_and_schema_need_a_key(server: TorporServer) -> None:
    server.deploy(fake_spec("a"))
    key = make_key(server, ["a"])
    for path in ("/metrics", "/docs", "/openapi.json"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["type"] == "authentication_error"
    # /metrics names every deployment: admin keys only.
    with server.api(key) as c:
        assert c.get("/metrics").status_code == 403
        assert c.get("/openapi.json").status_code == 200
    with server.api() as admin:
        r = admin.get("/metrics")
        assert r.status_code == 200 and "torpor_" in r.text
        assert admin.get("/docs").status_code == 200


def test_public_metrics_setting_opens_metrics_only(
    server_factory: Callable[..., TorporServer],
) -> None:
    srv = server_factory(env={"TORPOR_PUBLIC_METRICS": "1"})
    assert httpx.get(srv.url + "/metrics").status_code == 200
    assert httpx.get(srv.url + "/openapi.json").status_code == 401


def test_caller_view_hides_a_model_given_as_a_path(server: TorporServer) -> None:
    # Absolute, and relative to torpor's working directory (the data dir here): both are
    # paths on the server, which a caller never sees; a hub id is shown.
    (server.data_dir / "private-weights").mkdir()
    cases = {"abs": "/srv/models/secret.gguf", "rel": "private-weights", "hub": "org/model"}
    for name, model in cases.items():
        server.deploy(fake_spec(name, model=model))
    key = make_key(server, list(cases))
    with server.api(key) as c:
        seen = {name: c.get(f"/api/deployments/{name}").json()["model"] for name in cases}
    assert seen == {"abs": None, "rel": None, "hub": "org/model"}
