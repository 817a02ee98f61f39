"""vLLM-Omni: `vllm serve <model dir> --omni`, diffusion video (and image) models served
OpenAI-style; video generation is asynchronous jobs under `/v1/videos` (create, poll,
download the content), which torpor passes through (torpor.gateway.videos)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from torpor.engines.base import (
    OPENAI_ROUTES,
    EngineLaunch,
    check_bool,
    check_int,
    flag,
    refuse_unknown_options,
)
from torpor.engines.describe import option_names

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec

OPTIONS = option_names("vllm-omni")  # the described options (torpor.engines.describe)
# Switches that become a bare `--flag`.
SWITCHES = ("enable_cpu_offload", "vae_use_slicing", "vae_use_tiling", "enforce_eager")
# The video job routes (vLLM-Omni's Videos API), and image generation.
VIDEO_ROUTES = frozenset({"/v1/videos", "/v1/videos/*"})


class VllmOmniEngine:
    name = "vllm-omni"
    routes = OPENAI_ROUTES | VIDEO_ROUTES | {"/v1/images/generations", "/v1/images/edits"}
    control_routes = frozenset(
        {"/sleep", "/wake_up", "/is_sleeping", "/reset_prefix_cache", "/collective_rpc"}
    )

    def routes_for(self, spec: DeploymentSpec) -> frozenset[str]:
        return self.routes

    def needs_model(self, spec: DeploymentSpec) -> bool:
        return True

    def validate(self, spec: DeploymentSpec) -> None:
        if not spec.model:
            raise ValueError(
                "model: vllm-omni needs a Hugging Face repo id or a local model directory"
            )
        options = spec.options
        refuse_unknown_options(self.name, options, OPTIONS)
        check_int(options, "tensor_parallel_size")
        for switch in SWITCHES:
            check_bool(options, switch)
        tp = options.get("tensor_parallel_size")
        if tp is not None and spec.gpus and tp > spec.gpus:
            raise ValueError(
                f"options.tensor_parallel_size: {tp} needs at least {tp} gpus per worker "
                f"(gpus is {spec.gpus})"
            )

    def launch(self, spec: DeploymentSpec, model_path: Path | None) -> EngineLaunch:
        assert model_path is not None
        opts = spec.options
        exe = shutil.which("vllm") or "vllm"
        argv = [exe, "serve", str(model_path), "--omni", "--host", "{host}", "--port", "{port}"]
        argv += ["--served-model-name", spec.name]
        if opts.get("tensor_parallel_size") is not None:
            argv += ["--tensor-parallel-size", str(opts["tensor_parallel_size"])]
        argv += [flag(s) for s in SWITCHES if opts.get(s)]
        return EngineLaunch(
            tuple(argv + spec.framework_args), health_path="/health", served_model=spec.name
        )
