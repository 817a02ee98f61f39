"""embed: torpor's own OpenAI-compatible embedding server (BERT sentence-transformers models,
numpy on the CPU), e.g. the bundled `all-minilm-l6-v2`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from torpor.engines.base import FREEZE, EngineLaunch, refuse_unknown_options
from torpor.engines.describe import option_names

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec


class EmbedEngine:
    name = "embed"
    routes = frozenset({"/v1/embeddings", "/v1/models"})
    control_routes: frozenset[str] = frozenset()

    def routes_for(self, spec: DeploymentSpec) -> frozenset[str]:
        return self.routes

    def needs_model(self, spec: DeploymentSpec) -> bool:
        return True

    def validate(self, spec: DeploymentSpec) -> None:
        if not spec.model:
            raise ValueError(
                "model: embed needs a sentence-transformers model (repo id, directory "
                "or 'all-minilm-l6-v2')"
            )
        refuse_unknown_options(self.name, spec.options, option_names(self.name))
        if spec.gpus:
            raise ValueError("gpus: the embed engine runs on the CPU; set gpus to 0")

    def launch(self, spec: DeploymentSpec, model_path: Path | None) -> EngineLaunch:
        assert model_path is not None
        argv = [sys.executable, "-m", "torpor.engines.embed_server", "--model", str(model_path)]
        argv += ["--served-model-name", spec.name, "--host", "{host}", "--port", "{port}"]
        return EngineLaunch(
            tuple(argv + spec.framework_args),
            health_path="/health",
            served_model=spec.name,
            sleep=FREEZE,
        )
