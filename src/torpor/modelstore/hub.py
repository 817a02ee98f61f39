"""Hugging Face Hub downloads (huggingface_hub.snapshot_download) into a local directory,
with the size known up front (a dry run lists the files), progress from the bytes on disk,
the storage limit checked, and the Hub's errors turned into reasons a user can act on."""

from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path
from typing import Any

from torpor.models import ModelError
from torpor.modelstore.progress import DownloadProgress, tree_size

AUTH_ERROR = "Hugging Face authentication error: add HF_TOKEN to the deployment's env"
_POLL_S = 0.2


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def hub_error(
    exc: BaseException, repo: str, revision: str | None, token: str | None, endpoint: str
) -> ModelError:
    """A reason for a failed Hub call (the Hub's own classes, checked along the cause chain)."""
    import httpx
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    for err in _causes(exc):
        if isinstance(err, GatedRepoError):
            if token:
                return ModelError(
                    f"Hugging Face authentication error: the HF_TOKEN in the deployment's env "
                    f"has no access to the gated model {repo}"
                )
            return ModelError(AUTH_ERROR)
        if isinstance(err, RevisionNotFoundError):
            return ModelError(f"revision {revision!r} not found in Hugging Face repo {repo}")
        if isinstance(err, RepositoryNotFoundError):
            hint = "" if token else " (if it is private: add HF_TOKEN to the deployment's env)"
            return ModelError(f"model {repo} not found on the Hugging Face Hub{hint}")
        if isinstance(err, HfHubHTTPError):
            status = err.response.status_code if err.response is not None else "?"
            if status in (401, 403):
                return ModelError(
                    AUTH_ERROR
                    if not token
                    else f"Hugging Face authentication error: HTTP {status} for {repo}"
                )
            return ModelError(f"Hugging Face Hub error for {repo}: HTTP {status}")
        if isinstance(err, httpx.TransportError | ConnectionError | TimeoutError):
            return ModelError(
                f"cannot download {repo}: the Hugging Face Hub at {endpoint} cannot be reached "
                f"(no network? {type(err).__name__}: {err})"
            )
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "internet connection" in str(exc) or "cannot be accessed" in str(exc):
        return ModelError(
            f"cannot download {repo}: the Hugging Face Hub at {endpoint} cannot be reached "
            f"(no network? {text})"
        )
    return ModelError(f"cannot download {repo} from the Hugging Face Hub: {text}")


def hub_download(
    repo: str,
    dest: Path,
    *,
    revision: str | None,
    allow_patterns: list[str],
    ignore_patterns: list[str],
    token: str | None,
    endpoint: str | None,
    limit_bytes: int,
    progress: DownloadProgress,
    cancelled: threading.Event,
) -> int:
    """Download the repo's files into `dest` (blocking; run it in a thread). Returns the
    bytes fetched."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils.tqdm import disable_progress_bars

    disable_progress_bars()  # torpor reports progress itself
    where = (endpoint or constants.ENDPOINT).rstrip("/")
    kwargs: dict[str, Any] = {
        "revision": revision,
        "allow_patterns": allow_patterns or None,
        "ignore_patterns": ignore_patterns or None,
        "token": token or False,
        "endpoint": where,
        "local_dir": dest,
    }
    try:
        plan = snapshot_download(repo, dry_run=True, **kwargs)
    except Exception as exc:
        raise hub_error(exc, repo, revision, token, where) from None
    if not plan:
        raise ModelError(f"no files to download from {repo} (check source.allow_patterns)")
    total = sum(f.file_size or 0 for f in plan)
    progress.bytes_total, progress.files = total, len(plan)
    if total > limit_bytes:
        raise ModelError(_limit_message(repo, total, limit_bytes))

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(_POLL_S):
            progress.bytes_done = min(total, tree_size(dest))

    watcher = threading.Thread(target=watch, name=f"progress-{repo}", daemon=True)
    watcher.start()
    try:
        snapshot_download(repo, max_workers=4, **kwargs)
    except Exception as exc:
        raise hub_error(exc, repo, revision, token, where) from None
    finally:
        stop.set()
        watcher.join()
    if cancelled.is_set():
        shutil.rmtree(dest, ignore_errors=True)
        raise ModelError("download cancelled")
    # The hub's bookkeeping under .cache is not part of the model.
    with contextlib.suppress(OSError):
        shutil.rmtree(dest / ".cache")
    size = tree_size(dest)
    progress.bytes_done, progress.done = total, True
    if size > limit_bytes:
        raise ModelError(_limit_message(repo, size, limit_bytes))
    return size


GB = 1024**3


def _limit_message(what: str, size: int, limit: int) -> str:
    return limit_message(what, size, limit)


def limit_message(what: str, size: int, limit: int) -> str:
    return (
        f"storage limit exceeded: {what} needs {size / GB:.3g} GB but storage_gb is "
        f"{limit / GB:.3g}; raise storage_gb"
    )
