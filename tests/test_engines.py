"""Each framework's command line, env, probe and served id for representative specs, and
the refusal of options a framework does not have."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from torpor.engines import FRAMEWORKS, engine_for
from torpor.modelstore import derive_catalog
from torpor.spec import DeploymentPatch, DeploymentSpec

MODEL = Path("/data/deployments/x/models/m")


def spec(**fields: Any) -> DeploymentSpec:
    return DeploymentSpec.model_validate({"name": "chat", **fields})


def launch(s: DeploymentSpec, model: Path | None = MODEL) -> Any:
    return engine_for(s.framework).launch(s, model)


def test_frameworks() -> None:
    frameworks = {"llama.cpp", "vllm", "vllm-omni", "sglang", "ollama", "embed", "custom"}
    frameworks.add("function")
    assert set(FRAMEWORKS) == frameworks


def test_vllm_command_line() -> None:
    s = spec(
        framework="vllm",
        model="Qwen/Qwen2.5-0.5B-Instruct",
        gpus=2,
        options={"tensor_parallel_size": 2, "dtype": "bfloat16", "max_model_len": 4096},
        framework_args=["--enforce-eager"],
    )
    got = launch(s)
    assert got.argv[1:] == (
        "serve", str(MODEL), "--host", "{host}", "--port", "{port}",
        "--served-model-name", "chat", "--tensor-parallel-size", "2", "--dtype", "bfloat16",
        "--max-model-len", "4096", "--gpu-memory-utilization", "0.9", "--enforce-eager",
    )  # fmt: skip
    assert got.argv[0].endswith("vllm")
    assert got.health_path == "/health" and got.served_model == "chat"
    assert got.env == {} and got.sleep is None


def test_vllm_quantization_utilization_and_sleep_mode() -> None:
    s = spec(
        framework="vllm",
        model="org/m",
        options={"quantization": "awq", "gpu_memory_utilization": 0.5, "enable_sleep_mode": True},
    )
    got = launch(s)
    argv = list(got.argv)
    assert argv[argv.index("--quantization") + 1] == "awq"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.5"
    assert "--enable-sleep-mode" in argv
    assert got.env == {"VLLM_SERVER_DEV_MODE": "1"}
    assert got.sleep is not None and got.sleep.kind == "http"
    assert [str(c) for c in got.sleep.sleep_calls] == ["POST /sleep?level=1"]
    assert [str(c) for c in got.sleep.wake_calls] == ["POST /wake_up"]


def test_sglang_command_line() -> None:
    s = spec(
        framework="sglang",
        model="org/m",
        gpus=4,
        options={
            "tensor_parallel_size": 4,
            "gpu_memory_utilization": 0.8,
            "max_model_len": 8192,
            "dtype": "float16",
            "quantization": "fp8",
        },
    )
    got = launch(s)
    assert got.argv == (
        sys.executable, "-m", "sglang.launch_server", "--model-path", str(MODEL),
        "--host", "{host}", "--port", "{port}", "--served-model-name", "chat",
        "--tp-size", "4", "--dtype", "float16", "--context-length", "8192",
        "--quantization", "fp8", "--mem-fraction-static", "0.8",
    )  # fmt: skip
    assert got.health_path == "/health"


def test_ollama_serve_per_worker_with_its_own_host_and_models_dir() -> None:
    s = spec(framework="ollama", model="llama3.2:1b")
    got = launch(s, Path("/data/deployments/chat/models/llama3.2-1b"))
    assert got.argv[1:] == ("serve",)
    assert got.env == {
        "OLLAMA_HOST": "{host}:{port}",
        "OLLAMA_MODELS": "/data/deployments/chat/models/llama3.2-1b",
        "OLLAMA_KEEP_ALIVE": "-1",
    }
    assert got.health_path == "/api/version" and got.served_model == "chat"


def test_llamacpp_served_under_the_deployment_name() -> None:
    got = launch(spec(model="smollm2-135m-instruct", gpus=1), Path("/m/model.gguf"))
    argv = list(got.argv)
    assert "/m/model.gguf" in argv
    alias = "--alias" if "--alias" in argv else "--model_alias"
    assert argv[argv.index(alias) + 1] == "chat"
    assert got.served_model == "chat"


def test_embed_engine() -> None:
    got = launch(spec(framework="embed", model="all-minilm-l6-v2"))
    assert got.argv == (
        sys.executable, "-m", "torpor.engines.embed_server", "--model", str(MODEL),
        "--served-model-name", "chat", "--host", "{host}", "--port", "{port}",
    )  # fmt: skip


def test_custom_command_and_fixed_port() -> None:
    s = spec(
        framework="custom",
        model="/models/x",
        options={"command": "srv --model {model} --port {port}", "health_path": "/ready"},
    )
    got = launch(s, Path("/models/my model"))
    assert got.argv == ("srv", "--model", "/models/my model", "--port", "{port}")
    assert got.health_path == "/ready" and got.fixed_port is None
    fixed = launch(spec(framework="custom", options={"command": "srv", "port": 9000}), None)
    assert fixed.fixed_port == 9000 and fixed.health_path == "/health"


def test_custom_container_image(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.setattr(
        shutil, "which", lambda name: "/usr/bin/docker" if name == "docker" else None
    )
    s = spec(
        framework="custom",
        model="/models/x",
        gpus=1,
        env={"API_TOKEN": "t"},
        options={"image": "ghcr.io/acme/srv:1", "command": "serve --model {model} --port {port}"},
    )
    got = launch(s, Path("/data/m"))
    assert got.argv == (
        "/usr/bin/docker", "run", "--rm", "--init", "--network", "host",
        "--name", "torpor-{worker_id}", "--label", "torpor.worker={worker_id}",
        "--label", "torpor.instance={instance}", "--gpus", "device={gpu_ids}",
        "-e", "API_TOKEN", "-e", "FURIOSA_DEVICES", "-e", "PYTHONUNBUFFERED",
        "-e", "TORPOR_WORKER_ID", "-v", "/data/m:/model:ro", "ghcr.io/acme/srv:1",
        "serve", "--model", "/model", "--port", "{port}",
    )  # fmt: skip


def test_custom_image_needs_a_container_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValidationError, match=r"options\.image: .*docker or podman"):
        spec(framework="custom", options={"image": "x", "port": 8000})


@pytest.mark.parametrize(
    ("framework", "model", "options", "message"),
    [
        ("vllm", "org/m", {"tp": 2}, "vllm has no option 'tp'"),
        ("vllm", "org/m", {"mem_fraction_static": 0.5}, "vllm has no option"),
        ("sglang", "org/m", {"enable_sleep_mode": True}, "sglang has no option"),
        ("ollama", "llama3", {"dtype": "half"}, "ollama has no option"),
        ("llama.cpp", "smollm2-135m-instruct", {"n_ctx": 1}, "llama.cpp has no option"),
        ("embed", "all-minilm-l6-v2", {"batch": 1}, "embed has no option"),
        ("custom", "", {"command": "x --port {port}", "cmd": "y"}, "custom has no option"),
    ],
)
def test_unknown_options_are_refused(
    framework: str, model: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(framework=framework, model=model, options=options)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"options": {"tensor_parallel_size": 0}}, "tensor_parallel_size: must be an integer"),
        ({"options": {"tensor_parallel_size": 4}, "gpus": 2}, "needs at least 4 gpus"),
        ({"options": {"gpu_memory_utilization": 1.5}}, "gpu_memory_utilization: must be"),
        ({"options": {"dtype": "int3"}}, "dtype: must be one of"),
        ({"options": {"enable_sleep_mode": "yes"}}, "enable_sleep_mode: must be true or false"),
        ({"model": ""}, "model: vllm needs"),
    ],
)
def test_typed_options_are_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**{"framework": "vllm", "model": "org/m", **fields})


def test_spec_fields_accelerator_source_storage_catalog() -> None:
    s = spec(
        framework="vllm",
        model="org/m",
        accelerator="furiosa.ai/rngd",
        source={"revision": "v1", "allow_patterns": ["*.safetensors"]},
        storage_gb=20,
        catalog={"type": "code"},
    )
    assert s.accelerator == "furiosa.ai/rngd" and s.source.revision == "v1"
    with pytest.raises(ValidationError, match="accelerator"):
        spec(accelerator="amd.com/gpu", model="smollm2-135m-instruct")
    with pytest.raises(ValidationError, match=r"catalog\.type"):
        spec(model="smollm2-135m-instruct", catalog={"type": "music"})
    # A catalog patch changes only the fields it names.
    patched = DeploymentPatch.model_validate({"catalog": {"vendor": "Acme"}}).apply(s)
    assert patched.catalog.vendor == "Acme" and patched.catalog.type == "code"


def test_catalog_derived_from_the_model_and_editable() -> None:
    assert derive_catalog(spec(model="smollm2-135m-instruct")) == {
        "vendor": "HuggingFaceTB",
        "display_name": "SmolLM2 135M Instruct",
        "type": "chat",
    }
    assert derive_catalog(spec(framework="vllm", model="Qwen/Qwen2.5-Coder-7B")) == {
        "vendor": "Qwen",
        "display_name": "Qwen2.5-Coder-7B",
        "type": "code",
    }
    assert derive_catalog(spec(framework="embed", model="all-minilm-l6-v2"))["type"] == "embedding"
    assert derive_catalog(spec(framework="vllm", model="Wan-AI/Wan2.1-T2V-1.3B"))["type"] == (
        "video-generation"
    )
    own = spec(model="smollm2-135m-instruct", catalog={"display_name": "Tiny", "type": "code"})
    assert derive_catalog(own) == {
        "vendor": "HuggingFaceTB",
        "display_name": "Tiny",
        "type": "code",
    }
