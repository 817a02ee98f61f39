"""DeploymentSpec validation, PATCH merging, rollout detection and error formatting."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from torpor.spec import NAME_RULE, DeploymentPatch, DeploymentSpec, needs_rollout
from torpor.validation import format_errors


def llama(**fields: Any) -> dict[str, Any]:
    return {"name": "smollm2", "model": "smollm2-135m-instruct", **fields}


def custom(options: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "svc", "framework": "custom", "options": options, **fields}


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        DeploymentSpec.model_validate(data)
    return format_errors(info.value.errors())


# -- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "7", "smollm2", "my-model-1", "a" * 63, "a--b"])
def test_valid_names(name: str) -> None:
    assert DeploymentSpec.model_validate(llama(name=name)).name == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "My-model", "a_b", "a.b", "a b", "a" * 64])
def test_invalid_names_are_refused_with_the_rule(name: str) -> None:
    message = error_of(llama(name=name))
    assert message == f"name: {NAME_RULE}"
    assert "lowercase" in message and "hyphen" in message


# -- scaling fields --------------------------------------------------------------------------


def test_defaults() -> None:
    spec = DeploymentSpec.model_validate(llama())
    # llama.cpp serves one request at a time: its default concurrency is 1.
    assert (spec.min_workers, spec.max_workers, spec.concurrency) == (0, 1, 1)
    assert spec.framework == "llama.cpp"


def test_max_workers_below_min_workers_is_refused() -> None:
    message = error_of(llama(min_workers=3, max_workers=2))
    assert "max_workers" in message and "min_workers" in message


def test_equal_min_and_max_workers_are_accepted() -> None:
    spec = DeploymentSpec.model_validate(llama(min_workers=2, max_workers=2))
    assert spec.min_workers == spec.max_workers == 2


def test_negative_min_workers_is_refused() -> None:
    assert error_of(llama(min_workers=-1)).startswith("min_workers: ")


def test_zero_max_workers_is_refused() -> None:
    assert error_of(llama(max_workers=0)).startswith("max_workers: ")


def test_zero_concurrency_is_refused() -> None:
    assert error_of(llama(concurrency=0)).startswith("concurrency: ")


def test_unknown_field_is_refused() -> None:
    assert error_of(llama(replicas=2)) == "replicas: unknown field"


def test_missing_name_is_reported() -> None:
    assert error_of({"model": "m"}) == "name: field required"


def test_several_errors_are_joined() -> None:
    message = error_of(llama(name="A", concurrency=0))
    assert message.count("; ") == 1
    assert "name: " in message and "concurrency: " in message


# -- frameworks ------------------------------------------------------------------------------


def test_unknown_framework_is_refused() -> None:
    message = error_of(llama(framework="tgi"))
    assert message.startswith("framework: ")
    assert "llama.cpp" in message and "custom" in message


def test_llamacpp_needs_a_model() -> None:
    assert error_of({"name": "a"}).startswith("model: ")


@pytest.mark.parametrize("option", ["command", "n_ctx"])
def test_llamacpp_refuses_any_option(option: str) -> None:
    message = error_of(llama(options={option: "x"}))
    assert message.startswith("options: ")
    assert repr(option) in message


def test_custom_with_port_placeholder_is_accepted() -> None:
    spec = DeploymentSpec.model_validate(custom({"command": "serve --port {port}"}, max_workers=3))
    assert spec.model == ""


def test_custom_with_fixed_port_is_accepted() -> None:
    spec = DeploymentSpec.model_validate(custom({"command": "serve", "port": 8080}))
    assert spec.options["port"] == 8080


def test_custom_needs_a_command() -> None:
    assert error_of(custom({})).startswith("options.command: ")


def test_custom_command_needs_port_placeholder_or_port() -> None:
    message = error_of(custom({"command": "serve --port 8000"}))
    assert message.startswith("options.command: ")
    assert "{port}" in message


def test_custom_fixed_port_only_with_one_worker() -> None:
    message = error_of(custom({"command": "serve", "port": 8080}, max_workers=2))
    assert message.startswith("options.port: ")


def test_custom_unknown_option_is_refused() -> None:
    message = error_of(custom({"command": "serve {port}", "volume": "x"}))
    assert message.startswith("options: ")
    assert "'volume'" in message


def test_custom_model_placeholder_needs_model() -> None:
    assert error_of(custom({"command": "serve {port} {model}"})).startswith("model: ")


# -- patches ---------------------------------------------------------------------------------


def test_patch_merges_and_keeps_unset_fields() -> None:
    spec = DeploymentSpec.model_validate(llama(max_workers=3, description="old"))
    new = DeploymentPatch.model_validate({"max_workers": 5}).apply(spec)
    assert new.max_workers == 5
    assert new.description == "old"
    assert new.model == spec.model
    assert spec.max_workers == 3


def test_patch_is_validated_as_a_whole() -> None:
    spec = DeploymentSpec.model_validate(llama(min_workers=2, max_workers=3))
    patch = DeploymentPatch.model_validate({"max_workers": 1})
    with pytest.raises(ValidationError, match="max_workers"):
        patch.apply(spec)


def test_patch_refuses_unknown_fields_and_renaming() -> None:
    with pytest.raises(ValidationError):
        DeploymentPatch.model_validate({"replicas": 2})
    with pytest.raises(ValidationError):
        DeploymentPatch.model_validate({"name": "other"})


@pytest.mark.parametrize(
    "change",
    [
        {"model": "/models/other.gguf"},
        {"env": {"A": "1"}},
        {"framework_args": ["--n_ctx", "1024"]},
        {"gpus": 1},
    ],
)
def test_engine_changes_need_a_rollout(change: dict[str, Any]) -> None:
    old = DeploymentSpec.model_validate(llama())
    new = DeploymentPatch.model_validate(change).apply(old)
    assert needs_rollout(old, new)


def test_option_and_framework_changes_need_a_rollout() -> None:
    old = DeploymentSpec.model_validate(custom({"command": "serve {port}"}))
    new = DeploymentPatch.model_validate({"options": {"command": "serve2 {port}"}}).apply(old)
    assert needs_rollout(old, new)
    new = DeploymentPatch.model_validate(
        {"framework": "llama.cpp", "model": "m", "options": {}}
    ).apply(old)
    assert needs_rollout(old, new)


@pytest.mark.parametrize(
    "change",
    [
        {"min_workers": 1},
        {"max_workers": 4},
        {"concurrency": 8},
        {"idle_timeout_s": 5},
        {"wait_time_s": 10},
        {"max_queue": 3},
        {"description": "new words"},
    ],
)
def test_scaling_and_description_changes_apply_live(change: dict[str, Any]) -> None:
    old = DeploymentSpec.model_validate(llama())
    new = DeploymentPatch.model_validate(change).apply(old)
    assert new != old
    assert not needs_rollout(old, new)


# -- format_errors ---------------------------------------------------------------------------


def test_format_errors_without_errors() -> None:
    assert format_errors([]) == "invalid request"


def test_format_errors_drops_body_from_location() -> None:
    errors = [{"loc": ("body", "spec", "name"), "msg": "Value error, bad", "type": "value_error"}]
    assert format_errors(errors) == "spec.name: bad"
