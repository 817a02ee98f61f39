"""vLLM: `vllm serve <model dir>` with typed options, served under the deployment's name."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from torpor.engines.base import (
    EngineLaunch,
    check_bool,
    check_fraction,
    check_int,
    check_str,
    flag,
    refuse_unknown_options,
)

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec

DTYPES = frozenset({"auto", "half", "float16", "bfloat16", "float", "float32"})
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# Options that become `--flag value`, in this order.
VALUE_OPTIONS = ("tensor_parallel_size", "dtype", "max_model_len", "quantization")
OPTIONS = {*VALUE_OPTIONS, "gpu_memory_utilization", "enable_sleep_mode"}


def validate_parallelism(spec: DeploymentSpec, key: str) -> None:
    tp = spec.options.get(key)
    if tp is not None and spec.gpus and tp > spec.gpus:
        raise ValueError(
            f"options.{key}: {tp} needs at least {tp} gpus per worker (gpus is {spec.gpus})"
        )


class VllmEngine:
    name = "vllm"

    def needs_model(self, spec: DeploymentSpec) -> bool:
        return True

    def validate(self, spec: DeploymentSpec) -> None:
        if not spec.model:
            raise ValueError("model: vllm needs a Hugging Face repo id or a local model directory")
        refuse_unknown_options(self.name, spec.options, OPTIONS)
        check_int(spec.options, "tensor_parallel_size")
        check_int(spec.options, "max_model_len")
        check_str(spec.options, "dtype", DTYPES)
        check_str(spec.options, "quantization")
        check_fraction(spec.options, "gpu_memory_utilization")
        check_bool(spec.options, "enable_sleep_mode")
        validate_parallelism(spec, "tensor_parallel_size")

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
        sleep = wake = None
        if opts.get("enable_sleep_mode"):
            argv.append("--enable-sleep-mode")
            # vLLM exposes /sleep and /wake_up only in its server dev mode.
            env["VLLM_SERVER_DEV_MODE"] = "1"
            sleep, wake = "POST /sleep?level=1", "POST /wake_up"
        return EngineLaunch(
            tuple(argv + spec.framework_args),
            health_path="/health",
            env=env,
            served_model=spec.name,
            sleep=sleep,
            wake=wake,
        )
