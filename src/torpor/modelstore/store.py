"""Fetch a deployment's model once into its storage directory and account for its size."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torpor.models import ModelError, resolve_model
from torpor.modelstore.hub import GB, hub_download
from torpor.modelstore.ollama import ollama_pull
from torpor.modelstore.progress import DownloadProgress, tree_size
from torpor.modelstore.sources import Source, SourceKind, bundled_path, source_for

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec

MARKER = ".torpor-model.json"
MODELS_DIR = "models"


@dataclass(frozen=True)
class FetchedModel:
    source: Source
    path: Path | None
    size_bytes: int | None
    # True when this call downloaded it; False when it was already in the storage (or local).
    downloaded: bool = False


def storage_key(spec: DeploymentSpec, source: Source) -> str:
    """Identifies what was fetched: a different repo, revision or pattern is another model."""
    s = spec.source
    ident = [source.kind.value, source.ref, s.revision, s.allow_patterns, s.ignore_patterns]
    digest = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", source.ref).strip("-")[:60] or "model"
    return f"{slug}-{digest}"


def read_marker(model_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((model_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_marker(model_dir: Path, data: dict[str, Any]) -> None:
    tmp = model_dir / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, model_dir / MARKER)


def _gguf_in(path: Path, framework: str) -> Path:
    """llama.cpp loads one GGUF file: pick it out of a downloaded directory."""
    if framework != "llama.cpp" or not path.is_dir():
        return path
    files = sorted(path.rglob("*.gguf"))
    if len(files) == 1:
        return files[0]
    if not files:
        raise ModelError(f"model: no .gguf file in {path.name} (llama.cpp needs a GGUF model)")
    raise ModelError(
        f"model: {len(files)} .gguf files; choose one with source.allow_patterns, "
        f"e.g. [{files[0].name!r}]"
    )


class ModelStore:
    """Stateless helper: the deployment's storage directory holds everything it fetched."""

    async def fetch(
        self,
        spec: DeploymentSpec,
        needs_model: bool,
        storage: Path,
        on_progress: Callable[[DownloadProgress], None],
    ) -> FetchedModel:
        source = source_for(spec, needs_model)
        if source.kind is SourceKind.NONE:
            return FetchedModel(source, None, None)
        if source.kind is SourceKind.BUNDLED:
            path = await asyncio.to_thread(bundled_path, source.ref)
            return FetchedModel(source, path, await asyncio.to_thread(tree_size, path))
        if source.kind is SourceKind.LOCAL:
            path = await asyncio.to_thread(resolve_model, source.ref)
            size = await asyncio.to_thread(tree_size, path)
            return FetchedModel(source, _gguf_in(path, spec.framework), size)

        root = storage / MODELS_DIR
        dest = root / storage_key(spec, source)
        limit = int(spec.storage_gb * GB)
        marker = await asyncio.to_thread(read_marker, dest)
        downloaded = False
        if marker is not None:
            size = int(marker.get("size_bytes") or 0)
            if size > limit:
                raise ModelError(
                    f"storage limit exceeded: {source.ref} uses {size / GB:.3g} GB but "
                    f"storage_gb is {spec.storage_gb:.3g}; raise storage_gb"
                )
        else:
            await asyncio.to_thread(shutil.rmtree, dest, True)
            await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
            progress = DownloadProgress(source=f"{source.kind.value}:{source.ref}")
            on_progress(progress)
            if source.kind is SourceKind.HUGGINGFACE:
                size = await self._hub(spec, source, dest, limit, progress)
            else:
                size = await ollama_pull(source.ref, dest, spec.name, progress, limit)
            await asyncio.to_thread(
                _write_marker,
                dest,
                {
                    "source": source.kind.value,
                    "ref": source.ref,
                    "revision": spec.source.revision,
                    "size_bytes": size,
                    "fetched_at": datetime.now(UTC).isoformat(),
                },
            )
            downloaded = True
        # Models of earlier specs are not needed any more (running workers keep open files).
        for stale in await asyncio.to_thread(lambda: [p for p in root.iterdir() if p != dest]):
            await asyncio.to_thread(shutil.rmtree, stale, True)
        return FetchedModel(source, _gguf_in(dest, spec.framework), size, downloaded)

    async def _hub(
        self,
        spec: DeploymentSpec,
        source: Source,
        dest: Path,
        limit: int,
        progress: DownloadProgress,
    ) -> int:
        cancelled = threading.Event()
        try:
            return await asyncio.to_thread(
                hub_download,
                source.ref,
                dest,
                revision=spec.source.revision,
                allow_patterns=spec.source.allow_patterns,
                ignore_patterns=spec.source.ignore_patterns,
                token=spec.env.get("HF_TOKEN") or None,
                endpoint=spec.env.get("HF_ENDPOINT") or None,
                limit_bytes=limit,
                progress=progress,
                cancelled=cancelled,
            )
        except asyncio.CancelledError:
            cancelled.set()
            raise
        except ModelError:
            await asyncio.to_thread(shutil.rmtree, dest, True)
            raise
