"""vLLM: `vllm serve <model dir>` with typed options, served under the deployment's name."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torpor.engines.base import (
    OPENAI_ROUTES,
    EngineLaunch,
    flag,
    validate_model_server,
    vllm_sleep,
)
from torpor.engines.describe import option_names
from torpor.engines.tokens import TokenCall, TokenCalls, prompt_of

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# Options that become `--flag value`, in this order.
VALUE_OPTIONS = ("tensor_parallel_size", "dtype", "max_model_len", "quantization")
OPTIONS = option_names("vllm")  # the described options (torpor.engines.describe)


class VllmEngine:
    name = "vllm"
    routes = OPENAI_ROUTES | {
        "/v1/responses",
        "/v1/responses/*",
        "/v1/rerank",
        "/v1/score",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
    }
    control_routes = frozenset(
        {
            "/sleep",
            "/wake_up",
            "/is_sleeping",
            "/reset_prefix_cache",
            "/collective_rpc",
            "/v1/load_lora_adapter",
            "/v1/unload_lora_adapter",
        }
    )

    def routes_for(self, spec: DeploymentSpec) -> frozenset[str]:
        return self.routes

    def needs_model(self, spec: DeploymentSpec) -> bool:
        return True

    def token_calls(
        self, model: str, route: str, payload: dict[str, Any], completion: str
    ) -> TokenCalls | None:
        """vLLM's `/tokenize` applies the chat template to `messages` like a request does."""
        prompt = prompt_of(route, payload)
        if prompt is None:
            return None
        if "messages" in prompt:
            prompt = {**prompt, "add_generation_prompt": True}
        return TokenCalls(
            TokenCall("/tokenize", {"model": model, **prompt}),
            TokenCall(
                "/tokenize", {"model": model, "prompt": completion, "add_special_tokens": False}
            ),
        )

    def validate(self, spec: DeploymentSpec) -> None:
        validate_model_server(self.name, spec, OPTIONS, "enable_sleep_mode")

    def launch(self, spec: DeploymentSpec, model_path: Path | None) -> EngineLaunch:
        assert model_path is not None
        opts = spec.options
        exe = shutil.which("vllm") or "vllm"
        argv = [exe, "serve", str(model_path), "--host", "{host}", "--port", "{port}"]
        argv += ["--served-model-name", spec.name]
        for key in VALUE_OPTIONS:
            if opts.get(key) is not None:
                argv += [flag(key), str(opts[key])]
        util = opts.get("gpu_memory_utilization", DEFAULT_GPU_MEMORY_UTILIZATION)
        argv += ["--gpu-memory-utilization", str(util)]
        env: dict[str, str] = {}
        sleep = None
        if opts.get("enable_sleep_mode") or spec.sleep_after_s is not None:
            argv.append("--enable-sleep-mode")
            # vLLM exposes /sleep and /wake_up only in its server dev mode.
            env["VLLM_SERVER_DEV_MODE"] = "1"
            sleep = vllm_sleep(spec.sleep_level)
        return EngineLaunch(
            tuple(argv + spec.framework_args),
            health_path="/health",
            env=env,
            served_model=spec.name,
            sleep=sleep,
        )
