"""The model store: fetch a deployment's model once into its own storage directory.

Sources: a Hugging Face repo id (`org/name` or `hf://org/name`), an Ollama tag (for the
`ollama` framework), a local path, or a bundled model (`smollm2-135m-instruct`,
`all-minilm-l6-v2`). Workers get the local path and never download again.
"""

from __future__ import annotations

from torpor.modelstore.progress import DownloadProgress
from torpor.modelstore.sources import (
    BUNDLED,
    Source,
    SourceKind,
    derive_catalog,
    looks_local,
    source_for,
)
from torpor.modelstore.store import FetchedModel, ModelStore

__all__ = [
    "BUNDLED",
    "DownloadProgress",
    "FetchedModel",
    "ModelStore",
    "Source",
    "SourceKind",
    "derive_catalog",
    "looks_local",
    "source_for",
]
