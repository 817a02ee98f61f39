"""Pull an Ollama tag into the deployment's storage (OLLAMA_MODELS) once, through a
short-lived `ollama serve`, and copy it to the deployment's name (the served model id)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
from pathlib import Path

import aiohttp

from torpor.models import ModelError
from torpor.modelstore.hub import limit_message
from torpor.modelstore.progress import DownloadProgress, tree_size
from torpor.runtime.workerenv import worker_env

_START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def ollama_pull(
    tag: str, models_dir: Path, served_name: str, progress: DownloadProgress, limit_bytes: int
) -> int:
    """Pull `tag` into `models_dir`, alias it as `served_name`; returns the bytes stored."""
    exe = shutil.which("ollama")
    if exe is None:
        raise ModelError("framework ollama needs the `ollama` command on PATH")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # Allowlisted like a worker's (proxies, CA bundles, HOME for its key): not torpor's own.
    own = {"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(models_dir)}
    env = worker_env(os.environ, own, {}, None).env
    proc = await asyncio.create_subprocess_exec(
        exe, "serve", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await _wait_ready(http, base, proc)
            layers: dict[str, tuple[int, int]] = {}
            async with http.post(f"{base}/api/pull", json={"model": tag, "stream": True}) as r:
                if r.status != 200:
                    raise ModelError(f"ollama pull {tag}: HTTP {r.status}: {await r.text()}")
                async for line in r.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("error"):
                        raise ModelError(f"ollama pull {tag}: {event['error']}")
                    if event.get("total"):
                        # One event stream per layer: the model is the sum of its layers.
                        layer = str(event.get("digest") or event.get("status"))
                        layers[layer] = (int(event["total"]), int(event.get("completed") or 0))
                        progress.bytes_total = sum(t for t, _ in layers.values())
                        progress.bytes_done = sum(c for _, c in layers.values())
                        if progress.bytes_total > limit_bytes:
                            raise ModelError(limit_message(tag, progress.bytes_total, limit_bytes))
            body = {"source": tag, "destination": served_name}
            async with http.post(f"{base}/api/copy", json=body) as r:
                if r.status != 200:
                    raise ModelError(f"ollama copy {tag} -> {served_name}: HTTP {r.status}")
    except aiohttp.ClientError as exc:
        raise ModelError(f"ollama pull {tag} failed: {exc}") from None
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
    progress.done = True
    return tree_size(models_dir)


async def _wait_ready(
    http: aiohttp.ClientSession, base: str, proc: asyncio.subprocess.Process
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _START_TIMEOUT_S
    while loop.time() < deadline:
        if proc.returncode is not None:
            raise ModelError(f"ollama serve exited with code {proc.returncode} while pulling")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(f"{base}/api/version") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise ModelError(f"ollama serve not ready after {_START_TIMEOUT_S:.0f}s")
