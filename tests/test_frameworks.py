"""The framework descriptions (`torpor.engines.describe`) against the server's validation:
each creatable framework's described options, with their examples, make a valid spec, an
option that is not described is refused, and the route serves the descriptions."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tests.conftest import TorporServer
from torpor.engines import FRAMEWORKS
from torpor.engines.describe import FRAMEWORK_INFO, FrameworkInfo
from torpor.spec import DeploymentSpec

CREATABLE = [info for info in FRAMEWORK_INFO.values() if info.creatable]


def example_spec(info: FrameworkInfo) -> dict[str, Any]:
    options = {f.key: f.example for f in info.options if f.example is not None}
    return {
        "name": "probe",
        "framework": info.name,
        "model": info.default_model or info.model_placeholder or "org/model",
        "options": options,
        "gpus": 1 if info.gpus and options.get("tensor_parallel_size") else 0,
    }


def test_every_engine_is_described() -> None:
    assert set(FRAMEWORK_INFO) == set(FRAMEWORKS)
    assert {i.name for i in CREATABLE} == set(FRAMEWORKS) - {"function"}
    for info in CREATABLE:
        for field in info.options:
            assert field.kind != "choice" or field.example in field.choices, field


@pytest.mark.parametrize("info", CREATABLE, ids=lambda i: i.name)
def test_described_options_are_what_validation_accepts(info: FrameworkInfo) -> None:
    spec = DeploymentSpec.model_validate(example_spec(info))
    assert spec.options == {f.key: f.example for f in info.options if f.example is not None}
    assert spec.concurrency == info.default_concurrency
    # Every described option that has an example was sent: none is left untested but the
    # ones that need something this machine may lack (a container runtime, a free port).
    untested = {f.key for f in info.options if f.example is None}
    assert untested <= {"image", "port"}, untested
    with pytest.raises(ValidationError, match="has no option 'not_described'"):
        DeploymentSpec.model_validate(
            {**example_spec(info), "options": {"not_described": 1, **spec.options}}
        )


def test_llama_cpp_defaults_to_one_request_at_a_time() -> None:
    spec = DeploymentSpec(name="a", model="smollm2-135m-instruct")
    assert spec.concurrency == 1
    assert DeploymentSpec(name="a", model="smollm2-135m-instruct", concurrency=3).concurrency == 3


def test_frameworks_route_and_dry_run(server: TorporServer) -> None:
    with server.api() as api:
        data = api.get("/api/frameworks").json()["data"]
        assert [d["name"] for d in data] == list(FRAMEWORK_INFO)
        sglang = next(d for d in data if d["name"] == "sglang")
        assert "max_model_len" in [o["key"] for o in sglang["options"]]
        ok = api.post("/api/frameworks/validate", json=example_spec(FRAMEWORK_INFO["sglang"]))
        assert ok.status_code == 200, ok.text
        assert ok.json()["spec"]["options"]["max_model_len"] == 4096
        bad = api.post(
            "/api/frameworks/validate",
            json={"name": "x", "framework": "sglang", "model": "m", "options": {"tp_size": 2}},
        )
        assert bad.status_code == 422
        assert "sglang has no option 'tp_size'" in bad.json()["error"]["message"]
        # Nothing was created by the dry runs.
        assert [d["name"] for d in api.get("/api/deployments").json()["data"]] == ["smollm2"]
