"""Every number a key or a deployment takes is finite and bounded: out of range is a 422
that names the field, never a 500 or a silently stored Infinity (issue 10, finding 7).

The server tests send raw JSON text, because Python's json (FastAPI's parser) reads the
literals `Infinity` and `NaN`, which no JSON encoder writes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.conftest import TorporServer, fake_spec
from torpor.api.keys import KeyCreate, KeyPatch
from torpor.spec import DeploymentPatch, DeploymentSpec
from torpor.validation import (
    INT32_MAX,
    JSON_INT_MAX,
    MAX_BUDGET_USD,
    MAX_DURATION_S,
    MAX_WORKERS,
    check_json_value,
    format_errors,
)

HUGE_INT = "99999999999999999999"  # past 64 bits

# (field, JSON literal): each must be refused on a key, created or patched.
KEY_CASES = [
    ("budget_tokens_monthly", HUGE_INT),
    ("budget_tokens_monthly", str(INT32_MAX + 1)),  # past PostgreSQL's INTEGER
    ("budget_tokens_monthly", "1e30"),
    ("budget_tokens_monthly", "-1"),
    ("plan_tokens", HUGE_INT),
    ("plan_tokens", "Infinity"),
    ("budget_usd_monthly", "Infinity"),
    ("budget_usd_monthly", "-Infinity"),
    ("budget_usd_monthly", "NaN"),
    ("budget_usd_monthly", "1e30"),
]

# (field, JSON literal, name in the message): each must be refused on a deployment.
SPEC_CASES = [
    ("max_workers", "1e30", "max_workers"),
    ("max_workers", str(MAX_WORKERS + 1), "max_workers"),
    ("min_workers", HUGE_INT, "min_workers"),
    ("concurrency", "10001", "concurrency"),
    ("max_queue", "100001", "max_queue"),
    ("gpus", "65", "gpus"),
    ("wait_time_s", "Infinity", "wait_time_s"),
    ("wait_time_s", "NaN", "wait_time_s"),
    ("wait_time_s", str(MAX_DURATION_S + 1), "wait_time_s"),
    ("idle_timeout_s", "Infinity", "idle_timeout_s"),
    ("storage_gb", "Infinity", "storage_gb"),
    ("storage_gb", "1e7", "storage_gb"),
    ("budget_usd_monthly", "Infinity", "budget_usd_monthly"),
    ("budget_usd_monthly", "NaN", "budget_usd_monthly"),
    ("budget_tokens_monthly", HUGE_INT, "budget_tokens_monthly"),
    ("budget_tokens_monthly", str(JSON_INT_MAX + 1), "budget_tokens_monthly"),
    ("prices", '{"gpu_hourly": Infinity}', "prices.gpu_hourly"),
    ("prices", '{"prompt_per_mtok": 1e30}', "prices.prompt_per_mtok"),
]


def with_raw(body: dict[str, Any], field: str, literal: str) -> str:
    """`body` as JSON text with `"field": literal` added verbatim."""
    text = json.dumps(body)
    return f'{text[:-1]}, "{field}": {literal}}}' if body else f'{{"{field}": {literal}}}'


def refused(r: httpx.Response, name: str) -> str:
    assert r.status_code == 422, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert f"{name}: " in error["message"], error["message"]
    return str(error["message"])


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorporServer]:
    server = TorporServer(tmp_path_factory.mktemp("bounds")).start()
    try:
        server.deploy(fake_spec("fake"))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api(srv: TorporServer) -> Iterator[httpx.Client]:
    with srv.api() as client:
        client.headers["content-type"] = "application/json"
        yield client


# -- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "literal"), KEY_CASES)
def test_key_create_refuses(api: httpx.Client, field: str, literal: str) -> None:
    before = len(api.get("/api/keys").json()["data"])
    r = api.post("/api/keys", content=with_raw({"name": "k"}, field, literal))
    refused(r, field)
    assert len(api.get("/api/keys").json()["data"]) == before  # nothing was created


@pytest.mark.parametrize(("field", "literal"), KEY_CASES)
def test_key_patch_refuses(api: httpx.Client, field: str, literal: str) -> None:
    created = api.post("/api/keys", json={"name": "p", "budget_usd_monthly": 5})
    assert created.status_code == 201, created.text
    key_id = created.json()["id"]
    refused(api.patch(f"/api/keys/{key_id}", content=with_raw({}, field, literal)), field)
    row = next(k for k in api.get("/api/keys").json()["data"] if k["id"] == key_id)
    assert row["budget_usd_monthly"] == 5
    assert row["budget_tokens_monthly"] is None and row["plan_tokens"] is None


def test_key_limits_at_the_bounds_are_kept(api: httpx.Client) -> None:
    body = {
        "name": "max",
        "budget_usd_monthly": MAX_BUDGET_USD,
        "budget_tokens_monthly": INT32_MAX,
        "plan_tokens": INT32_MAX,
    }
    r = api.post("/api/keys", json=body)
    assert r.status_code == 201, r.text
    key_id = r.json()["id"]
    row = next(k for k in api.get("/api/keys").json()["data"] if k["id"] == key_id)
    assert {k: row[k] for k in body} == body


# -- deployments -----------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "literal", "name"), SPEC_CASES)
def test_deployment_create_refuses(api: httpx.Client, field: str, literal: str, name: str) -> None:
    r = api.post("/api/deployments", content=with_raw(fake_spec("bad"), field, literal))
    refused(r, name)
    assert api.get("/api/deployments/bad").status_code == 404


@pytest.mark.parametrize(("field", "literal", "name"), SPEC_CASES)
def test_deployment_patch_refuses(api: httpx.Client, field: str, literal: str, name: str) -> None:
    before = api.get("/api/deployments/fake").json()
    refused(api.patch("/api/deployments/fake", content=with_raw({}, field, literal)), name)
    after = api.get("/api/deployments/fake").json()
    assert after["spec_version"] == before["spec_version"]
    assert after[field] == before[field]


def test_deployment_options_must_be_finite(api: httpx.Client) -> None:
    spec = fake_spec("opts")
    text = json.dumps(spec).replace('"/health"', '"/health", "port": Infinity')
    message = refused(api.post("/api/deployments", content=text), "options")
    assert "finite" in message and "port" in message
    options = text[text.index('{"command"') : text.index("Infinity") + len("Infinity") + 1]
    message = refused(
        api.patch("/api/deployments/fake", content=f'{{"options": {options}}}'), "options"
    )
    assert "finite" in message and "port" in message


def test_deployment_at_the_bounds_is_accepted(api: httpx.Client, srv: TorporServer) -> None:
    fields = {
        "max_workers": MAX_WORKERS,
        "wait_time_s": MAX_DURATION_S,
        "idle_timeout_s": MAX_DURATION_S,
        "budget_tokens_monthly": JSON_INT_MAX,
        "budget_usd_monthly": MAX_BUDGET_USD,
    }
    dep = srv.deploy(fake_spec("edge", **fields))
    assert {k: dep[k] for k in fields} == fields


# -- the models ------------------------------------------------------------------------------


def spec_error(**fields: Any) -> str:
    with pytest.raises(ValidationError) as info:
        DeploymentSpec.model_validate({"name": "m", "model": "x", **fields})
    return format_errors(info.value.errors())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_workers", 10**30),
        ("max_workers", 1e30),
        ("min_workers", 1001),
        ("concurrency", 10_001),
        ("max_queue", 100_001),
        ("gpus", 65),
        ("wait_time_s", float("inf")),
        ("wait_time_s", float("nan")),
        ("idle_timeout_s", float("inf")),
        ("idle_timeout_s", 30 * 86400 + 1),
        ("storage_gb", float("inf")),
        ("storage_gb", 1e6 + 1),
        ("budget_usd_monthly", float("inf")),
        ("budget_usd_monthly", 1e12 * 2),
        ("budget_tokens_monthly", 2**53 + 1),
    ],
)
def test_spec_refuses(field: str, value: Any) -> None:
    assert spec_error(**{field: value}).startswith(f"{field}: ")
    with pytest.raises(ValidationError) as info:
        DeploymentPatch.model_validate({field: value})
    assert format_errors(info.value.errors()).startswith(f"{field}: ")


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e7])
def test_prices_refuse(value: float) -> None:
    message = spec_error(prices={"completion_per_mtok": value})
    assert message.startswith("prices.completion_per_mtok: ")


def test_non_finite_messages_say_finite() -> None:
    assert "finite" in spec_error(wait_time_s=float("inf"))


@pytest.mark.parametrize("model", [KeyCreate, KeyPatch])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("budget_tokens_monthly", 2**31),
        ("plan_tokens", 10**20),
        ("budget_usd_monthly", float("inf")),
        ("budget_usd_monthly", float("nan")),
        ("budget_usd_monthly", 1e13),
    ],
)
def test_key_models_refuse(model: type[KeyCreate | KeyPatch], field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate({"name": "k", field: value})
    assert format_errors(info.value.errors()).startswith(f"{field}: ")


def test_key_models_accept_the_bounds() -> None:
    key = KeyCreate(name="k", budget_tokens_monthly=INT32_MAX, budget_usd_monthly=MAX_BUDGET_USD)
    assert key.budget_tokens_monthly == INT32_MAX


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": float("inf")}, "a"),
        ({"a": {"b": [1, float("nan")]}}, "a.b[1]"),
        ({"seed": 2**64}, "seed"),
        ({"x": -(2**63) - 1}, "x"),
    ],
)
def test_check_json_value_refuses(value: Any, where: str) -> None:
    with pytest.raises(ValueError) as info:
        check_json_value(value)
    assert str(info.value).endswith(f"(at {where})")


def test_check_json_value_refuses_deep_nesting() -> None:
    value: Any = 1
    for _ in range(40):
        value = [value]
    with pytest.raises(ValueError, match="nested deeper"):
        check_json_value({"a": value})


def test_check_json_value_accepts_plain_json() -> None:
    value = {"a": [1, 2.5, "x", None, True, {"b": 2**63 - 1}], "c": -(2**63)}
    assert check_json_value(value) is value


def test_spec_options_refuse_non_finite_numbers() -> None:
    message = spec_error(framework="custom", options={"command": "x {port}", "port": float("inf")})
    assert message.startswith("options: ") and "finite" in message


# -- other free-form JSON the API stores or forwards -----------------------------------------


@pytest.mark.parametrize("literal", ["Infinity", "NaN", HUGE_INT + "0000"])
def test_conversation_settings_must_be_finite(api: httpx.Client, literal: str) -> None:
    body = f'{{"deployment": "fake", "settings": {{"temperature": {literal}}}}}'
    message = refused(api.post("/api/conversations", content=body), "settings")
    assert "temperature" in message
    created = api.post("/api/conversations", json={"deployment": "fake"})
    assert created.status_code == 201, created.text
    conv = created.json()["id"]
    patch = f'{{"settings": {{"temperature": {literal}}}}}'
    refused(api.patch(f"/api/conversations/{conv}", content=patch), "settings")
    assert api.get(f"/api/conversations/{conv}").json()["settings"] == {}


@pytest.mark.parametrize("literal", ["Infinity", HUGE_INT])
def test_async_input_must_be_finite(api: httpx.Client, literal: str) -> None:
    # A 20-digit integer was a 500: orjson cannot write it on to the engine.
    body = f'{{"input": {{"max_tokens": {literal}}}}}'
    message = refused(api.post("/deployment/fake/v1/chat/completions", content=body), "input")
    assert "max_tokens" in message


@pytest.mark.postgres
def test_key_token_limits_fit_postgres_integer_columns(
    postgres_url: str, server_factory: Callable[..., TorporServer]
) -> None:
    """PostgreSQL's INTEGER is 32-bit: the largest accepted limit is stored and read back,
    one more is a 422 (it was a 500 from the database)."""
    server = server_factory(env={"TORPOR_DATABASE_URL": postgres_url})
    with server.api() as api:
        body = {"name": "pg", "budget_tokens_monthly": INT32_MAX, "plan_tokens": INT32_MAX}
        r = api.post("/api/keys", json=body)
        assert r.status_code == 201, r.text
        key_id = r.json()["id"]
        row = next(k for k in api.get("/api/keys").json()["data"] if k["id"] == key_id)
        assert (row["budget_tokens_monthly"], row["plan_tokens"]) == (INT32_MAX, INT32_MAX)
        over = {"budget_tokens_monthly": INT32_MAX + 1}
        refused(api.patch(f"/api/keys/{key_id}", json=over), "budget_tokens_monthly")
        refused(api.post("/api/keys", json={"name": "pg2", **over}), "budget_tokens_monthly")


# -- specs stored before the bounds ----------------------------------------------------------


def test_load_stored_spec_resets_fields_that_break_todays_rules() -> None:
    from torpor.spec import load_stored_spec

    stored = {"name": "old", **fake_spec("old"), "wait_time_s": float("inf"), "max_workers": 10**6}
    spec, notes = load_stored_spec(stored)
    assert spec.wait_time_s == DeploymentSpec.model_fields["wait_time_s"].default
    assert spec.max_workers == DeploymentSpec.model_fields["max_workers"].default
    assert spec.options == stored["options"]  # the valid fields are kept
    assert sorted(n.split(":")[0] for n in notes) == ["max_workers", "wait_time_s"]
    with pytest.raises(ValidationError):
        load_stored_spec({"name": "Not A Name"})


def test_a_spec_stored_by_an_older_torpor_does_not_stop_the_server(
    server_factory: Callable[..., TorporServer], tmp_path: Any
) -> None:
    import sqlite3

    data = tmp_path / "data"
    srv = server_factory(data)
    srv.deploy(fake_spec("legacy"))
    srv.stop()
    # What the old code accepted and stored: Infinity (Python's json writes it).
    db = sqlite3.connect(data / "torpor.db")
    (raw,) = db.execute("SELECT spec FROM deployments WHERE name = 'legacy'").fetchone()
    spec = json.loads(raw)
    spec["wait_time_s"] = float("inf")
    db.execute("UPDATE deployments SET spec = ? WHERE name = 'legacy'", (json.dumps(spec),))
    db.commit()
    db.close()

    again = server_factory(data)  # used to die in Controller.load on the ValidationError
    view = again.get("legacy")
    assert view["wait_time_s"] == DeploymentSpec.model_fields["wait_time_s"].default
    assert "wait_time_s" in again.log() and "no longer valid" in again.log()
