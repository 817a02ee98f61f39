"""llama.cpp: `llama-server` when on PATH, else llama-cpp-python's OpenAI server."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torpor.engines.base import FREEZE, OPENAI_ROUTES, EngineLaunch, refuse_unknown_options
from torpor.engines.describe import option_names
from torpor.engines.fields import RequestFields
from torpor.engines.tokens import TokenCall, TokenCalls, prompt_of

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec


class LlamaCppEngine:
    name = "llama.cpp"
    # llama-server also serves /v1/rerank; llama-cpp-python answers 404 there.
    routes = OPENAI_ROUTES | {"/v1/rerank"}
    # /torpor/*: the token count route of torpor.llamacpp_worker.
    control_routes = frozenset({"/slots", "/slots/*", "/props", "/lora-adapters", "/torpor/*"})
    # llama-cpp-python reads neither `max_completion_tokens` nor `n`, and knows
    # `json_schema` only as `{"type": "json_object", "schema": ...}` (llama-server reads both).
    request_fields = RequestFields(
        renames=(("max_completion_tokens", "max_tokens"),),
        maxima=(("n", 1),),
        json_schema_as_json_object=True,
    )

    def routes_for(self, spec: DeploymentSpec) -> frozenset[str]:
        return self.routes

    def needs_model(self, spec: DeploymentSpec) -> bool:
        return True

    def token_calls(
        self, model: str, route: str, payload: dict[str, Any], completion: str
    ) -> TokenCalls | None:
        """llama-cpp-python streams carry no usage: count with the worker's own chat handler
        and tokenizer (torpor.llamacpp_worker). llama-server reports usage itself."""
        prompt = prompt_of(route, payload)
        if prompt is None or shutil.which("llama-server"):
            return None
        path = "/torpor/tokenize/count"
        return TokenCalls(
            TokenCall(path, {"model": model, **prompt}),
            TokenCall(path, {"model": model, "text": completion}),
        )

    def validate(self, spec: DeploymentSpec) -> None:
        if not spec.model:
            raise ValueError("model: llama.cpp needs a GGUF file path or 'smollm2-135m-instruct'")
        refuse_unknown_options(self.name, spec.options, option_names(self.name))

    def launch(self, spec: DeploymentSpec, model_path: Path | None) -> EngineLaunch:
        assert model_path is not None
        offload = ["--n-gpu-layers", "-1"] if spec.gpus else []
        server = shutil.which("llama-server")
        if server:
            # Served under the deployment's name so `model` needs no rewriting either way.
            argv = [server, "--model", str(model_path), "--host", "{host}", "--port", "{port}"]
            argv += ["--alias", spec.name, *offload]
            return EngineLaunch(
                tuple(argv + spec.framework_args),
                health_path="/health",
                served_model=spec.name,
                sleep=FREEZE,
            )
        # llama-cpp-python's server, with torpor's token count route added.
        argv = [sys.executable, "-m", "torpor.llamacpp_worker", "--model", str(model_path)]
        argv += ["--host", "{host}", "--port", "{port}", "--model_alias", spec.name]
        # This server runs one request at a time, and by default a new request cuts off a
        # stream in flight; queued requests must wait their turn instead.
        argv += ["--interrupt_requests", "False"]
        if spec.gpus:
            argv += ["--n_gpu_layers", "-1"]
        return EngineLaunch(
            tuple(argv + spec.framework_args),
            health_path="/v1/models",
            served_model=spec.name,
            sleep=FREEZE,
        )
