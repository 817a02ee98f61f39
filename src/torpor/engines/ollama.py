"""Ollama: one `ollama serve` per worker on its own OLLAMA_HOST, models from the deployment's
storage (OLLAMA_MODELS), where setup pulled the tag and copied it to the deployment's name."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from torpor.engines.base import (
    OPENAI_ROUTES,
    EngineLaunch,
    HttpCall,
    SleepMode,
    check_str,
    refuse_unknown_options,
)
from torpor.engines.describe import option_names
from torpor.engines.fields import RequestFields

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec

OPTIONS = option_names("ollama")  # the described options (torpor.engines.describe)
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9._-]+)?$")


def ollama_exe() -> str:
    return shutil.which("ollama") or "ollama"


class OllamaEngine:
    name = "ollama"
    routes = OPENAI_ROUTES
    control_routes = frozenset(
        {"/api/pull", "/api/push", "/api/delete", "/api/create", "/api/copy", "/api/blobs/*"}
    )
    # Ollama's OpenAI layer returns one choice whatever `n` says.
    request_fields = RequestFields(
        renames=(("max_completion_tokens", "max_tokens"),), maxima=(("n", 1),)
    )

    def routes_for(self, spec: DeploymentSpec) -> frozenset[str]:
        return self.routes

    def needs_model(self, spec: DeploymentSpec) -> bool:
        return True

    def validate(self, spec: DeploymentSpec) -> None:
        if not spec.model or not TAG_RE.match(spec.model):
            raise ValueError("model: ollama needs a model tag such as 'llama3.2:1b'")
        refuse_unknown_options(self.name, spec.options, OPTIONS)
        check_str(spec.options, "keep_alive")
        if spec.framework_args:
            raise ValueError("framework_args: ollama serve takes no arguments; use env instead")

    def launch(self, spec: DeploymentSpec, model_path: Path | None) -> EngineLaunch:
        assert model_path is not None  # the OLLAMA_MODELS directory in the storage
        env = {"OLLAMA_HOST": "{host}:{port}", "OLLAMA_MODELS": str(model_path)}
        # Loaded for as long as the worker lives; torpor scales the worker, not the model.
        env["OLLAMA_KEEP_ALIVE"] = str(spec.options.get("keep_alive", "-1"))
        # Sleep unloads the model (keep_alive 0: GPU memory freed); wake loads it again.
        sleep = SleepMode(
            "http",
            "GPU memory: the model is unloaded (the server process stays)",
            (HttpCall("POST", "/api/generate", {"model": spec.name, "keep_alive": 0}),),
            (HttpCall("POST", "/api/generate", {"model": spec.name, "keep_alive": -1}),),
        )
        return EngineLaunch(
            (ollama_exe(), "serve"),
            health_path="/api/version",
            env=env,
            served_model=spec.name,
            sleep=sleep,
        )
