"""Engines: one module per framework, each mostly data (command line, probe, served id)."""

from __future__ import annotations

from torpor.engines.base import Engine, EngineLaunch
from torpor.engines.custom import CustomEngine
from torpor.engines.embed import EmbedEngine
from torpor.engines.function import FunctionEngine
from torpor.engines.llamacpp import LlamaCppEngine
from torpor.engines.ollama import OllamaEngine
from torpor.engines.sglang import SglangEngine
from torpor.engines.vllm import VllmEngine
from torpor.engines.vllm_omni import VllmOmniEngine

FRAMEWORKS: dict[str, Engine] = {
    LlamaCppEngine.name: LlamaCppEngine(),
    VllmEngine.name: VllmEngine(),
    VllmOmniEngine.name: VllmOmniEngine(),
    SglangEngine.name: SglangEngine(),
    OllamaEngine.name: OllamaEngine(),
    EmbedEngine.name: EmbedEngine(),
    CustomEngine.name: CustomEngine(),
    FunctionEngine.name: FunctionEngine(),
}


def engine_for(framework: str) -> Engine:
    try:
        return FRAMEWORKS[framework]
    except KeyError:
        raise ValueError(f"unknown framework {framework!r}") from None


__all__ = ["FRAMEWORKS", "Engine", "EngineLaunch", "engine_for"]
