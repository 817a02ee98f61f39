"""SGLang: `python -m sglang.launch_server` with typed options (the vLLM names, mapped)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from torpor.engines.base import (
    OPENAI_ROUTES,
    EngineLaunch,
    HttpCall,
    SleepMode,
    validate_model_server,
)
from torpor.engines.describe import option_names

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec

# torpor option -> SGLang flag (same option names as vLLM, SGLang's own flags).
FLAGS = {
    "tensor_parallel_size": "--tp-size",
    "dtype": "--dtype",
    "max_model_len": "--context-length",
    "quantization": "--quantization",
    "gpu_memory_utilization": "--mem-fraction-static",
}
# SGLang's memory saver (`--enable-memory-saver`): weights and KV cache leave the GPU.
SGLANG_SLEEP = SleepMode(
    "http",
    "GPU memory: weights and KV cache released (kept in host memory)",
    (HttpCall("POST", "/release_memory_occupation", {}),),
    (HttpCall("POST", "/resume_memory_occupation", {}),),
)
OPTIONS = option_names("sglang")  # the described options (torpor.engines.describe)


class SglangEngine:
    name = "sglang"
    routes = OPENAI_ROUTES | {"/v1/rerank", "/v1/score"}
    control_routes = frozenset(
        {
            "/release_memory_occupation",
            "/resume_memory_occupation",
            "/flush_cache",
            "/update_weights_from_disk",
            "/update_weights_from_tensor",
            "/update_weights_from_distributed",
            "/load_lora_adapter",
            "/unload_lora_adapter",
            "/start_profile",
            "/stop_profile",
        }
    )

    def routes_for(self, spec: DeploymentSpec) -> frozenset[str]:
        return self.routes

    def needs_model(self, spec: DeploymentSpec) -> bool:
        return True

    def validate(self, spec: DeploymentSpec) -> None:
        validate_model_server(self.name, spec, OPTIONS, "enable_memory_saver")

    def launch(self, spec: DeploymentSpec, model_path: Path | None) -> EngineLaunch:
        assert model_path is not None
        opts = spec.options
        argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_path)]
        argv += ["--host", "{host}", "--port", "{port}", "--served-model-name", spec.name]
        for key, name in FLAGS.items():
            if opts.get(key) is not None:
                argv += [name, str(opts[key])]
        sleep = None
        if opts.get("enable_memory_saver") or spec.sleep_after_s is not None:
            argv.append("--enable-memory-saver")
            sleep = SGLANG_SLEEP
        return EngineLaunch(
            tuple(argv + spec.framework_args),
            health_path="/health",
            served_model=spec.name,
            sleep=sleep,
        )
