"""torpor.Client and torpor.AsyncClient against a real `torpor serve` (fake engine): typed
results, typed errors for the error table, keys, usage, logs and async requests."""

from __future__ import annotations

import socket
import time

import pytest

import torpor
from tests.conftest import ADMIN_KEY, TorporServer, fake_spec
from torpor.sdk import (
    APIConnectionError,
    AsyncRequest,
    AuthenticationError,
    ConflictError,
    CreatedKey,
    Deployment,
    DeploymentSpec,
    InvalidSpecError,
    NotFoundError,
    PermissionDeniedError,
    UsageSummary,
)

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def test_lazy_top_level_exports() -> None:
    assert torpor.Client is torpor.sdk.Client
    assert torpor.AsyncClient is torpor.sdk.AsyncClient
    assert torpor.App is torpor.functions.App
    with pytest.raises(AttributeError):
        _ = torpor.NoSuchThing  # type: ignore[attr-defined]


def test_url_and_key_from_the_environment(
    server: TorporServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORPOR_URL", server.url + "/")
    monkeypatch.setenv("TORPOR_API_KEY", ADMIN_KEY)
    with torpor.Client() as client:
        assert client.url == server.url
        assert {d.name for d in client.list_deployments()} == {"smollm2"}
    monkeypatch.setenv("TORPOR_API_KEY", "tp-not-a-key-0123456789abcdef")
    with torpor.Client() as client, pytest.raises(AuthenticationError) as err:
        client.list_deployments()
    assert err.value.status == 401
    assert err.value.code == "invalid_api_key"


def test_deployments_typed_with_typed_errors(server: TorporServer) -> None:
    with torpor.Client(server.url, ADMIN_KEY) as client:
        spec = DeploymentSpec.model_validate(fake_spec("sdk-fake", min_workers=1))
        created = client.create_deployment(spec)
        assert isinstance(created, Deployment)
        assert created.framework == "custom"
        seen: list[str | None] = []
        ready = client.wait_until_ready("sdk-fake", 60, on_progress=lambda d: seen.append(d.state))
        assert ready.state == "running" and seen[-1] == "running"
        server.wait_for("sdk-fake", lambda d: d["ready_workers"] == 1)

        with pytest.raises(ConflictError):
            client.create_deployment(spec)
        with pytest.raises(InvalidSpecError) as invalid:
            client.create_deployment({"name": "Bad_Name", "framework": "custom"})
        assert invalid.value.status == 422 and "name" in invalid.value.message
        with pytest.raises(NotFoundError):
            client.get_deployment("nope")

        changed = client.update_deployment("sdk-fake", {"max_workers": 3})
        assert changed.max_workers == 3
        assert "sdk-fake" in {d.name for d in client.list_deployments()}
        assert any(e.kind == "setup" for e in client.events("sdk-fake"))
        assert any("starting worker" in line for line in client.logs("sdk-fake", tail=50))

        # Async requests: submit, wait, and a cancel of an ended one is a conflict.
        req = client.submit("sdk-fake", "/v1/chat/completions", CHAT)
        assert isinstance(req, AsyncRequest) and req.status == "pending"
        done = client.wait_request(req.id, timeout=60)
        assert done.status == "completed" and done.response["object"] == "chat.completion"
        with pytest.raises(ConflictError):
            client.cancel_request(req.id)

        usage = client.usage_summary("1h", "sdk-fake")
        assert isinstance(usage, UsageSummary) and usage.requests >= 1

        key = client.create_key("reader", deployments=["sdk-fake"])
        assert isinstance(key, CreatedKey) and key.key.startswith("tp-")
        assert key.id in {k.id for k in client.list_keys()}
        with torpor.Client(server.url, key.key) as scoped:
            assert [d.name for d in scoped.list_deployments()] == ["sdk-fake"]
            with pytest.raises(PermissionDeniedError):
                scoped.create_deployment(fake_spec("sdk-other"))
        client.revoke_key(key.id)
        with torpor.Client(server.url, key.key) as revoked, pytest.raises(AuthenticationError):
            revoked.list_deployments()

        client.delete_deployment("sdk-fake")
        assert gone(client, "sdk-fake")


def gone(client: torpor.Client, name: str, timeout: float = 30) -> bool:
    """True once the deployment answers 404 (deleting takes a moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.get_deployment(name)
        except NotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_unreachable_server_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        torpor.Client(f"http://127.0.0.1:{port}", "tp-x") as client,
        pytest.raises(APIConnectionError) as err,
    ):
        client.list_deployments()
    assert "cannot reach torpor" in err.value.message


async def test_async_client(server: TorporServer) -> None:
    async with torpor.AsyncClient(server.url, ADMIN_KEY) as client:
        created = await client.create_deployment(fake_spec("sdk-async"))
        assert created.name == "sdk-async"
        ready = await client.wait_until_ready("sdk-async", 60)
        assert ready.state == "running"
        names = {d.name for d in await client.list_deployments()}
        assert {"sdk-async", "smollm2"} <= names
        with pytest.raises(NotFoundError):
            await client.get_deployment("nope")
        req = await client.submit("sdk-async", "/v1/chat/completions", CHAT)
        done = await client.wait_request(req.id, timeout=60)
        assert done.status == "completed"
        lines = [line async for line in client.logs("sdk-async", tail=50)]
        assert any("starting worker" in line for line in lines)
        await client.delete_deployment("sdk-async")
