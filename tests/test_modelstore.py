"""The model store against a local Hub (tests/hub_server.py via HF_ENDPOINT): fetched once
into the deployment's storage, progress and size on the deployment, failures with reasons."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TorporServer, free_port
from tests.hub_server import HubServer
from torpor.models import ModelError
from torpor.modelstore.hub import AUTH_ERROR, hub_download
from torpor.modelstore.progress import DownloadProgress

WEIGHTS = os.urandom(640 * 1024)
REPOS = {
    "acme/tiny": {"config.json": b'{"model_type": "tiny"}', "weights.bin": WEIGHTS},
    "acme/gated": {"config.json": b"{}", "weights.bin": b"w" * 1000},
}
TOTAL = sum(len(b) for b in REPOS["acme/tiny"].values())


def model_spec(name: str, hub_url: str, **fields: Any) -> dict[str, Any]:
    """A fake-engine worker that starts only when the model files are at the path it gets."""
    engine = f"{sys.executable} -m torpor.testing.fake_engine --port {{port}}"
    command = f'sh -c "test -s {{model}}/weights.bin && exec {engine}"'
    spec: dict[str, Any] = {
        "name": name,
        "framework": "custom",
        "model": "acme/tiny",
        "env": {"HF_ENDPOINT": hub_url},
        "options": {"command": command, "health_path": "/health"},
    }
    spec.update(fields)
    return spec


def watch(
    srv: TorporServer, name: str, until: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Every view of the deployment until `until` holds (polled as fast as the API answers)."""
    seen = []
    deadline = time.monotonic() + 60
    with srv.api() as c:
        while time.monotonic() < deadline:
            dep = c.get(f"/api/deployments/{name}").json()
            seen.append(dep)
            if until(dep):
                return seen
            time.sleep(0.01)
    raise AssertionError(f"{name} never matched; last view {seen[-1]}")


def test_fetched_once_for_all_workers_with_progress_and_size(
    server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    with HubServer(REPOS, chunk_delay_s=0.05, chunk_size=32 * 1024) as hub:
        srv = server_factory(tmp_path / "data")
        srv.deploy(model_spec("m", hub.url, min_workers=2, max_workers=3))
        views = watch(srv, "m", lambda d: d["state"] in ("running", "failed"))
        dep = srv.wait_for("m", lambda d: d["ready_workers"] == 2)

        # Progress was visible while downloading: the total was known, bytes grew.
        during = [
            v["download"] for v in views if v["state"] == "downloading_model" and v["download"]
        ]
        assert any(p["bytes_total"] == TOTAL for p in during), views[-1]
        assert all(p["bytes_done"] <= TOTAL for p in during)
        assert dep["download"] == {
            "source": "huggingface:acme/tiny",
            "bytes_done": TOTAL,
            "bytes_total": TOTAL,
            "percent": 100.0,
            "files": 2,
            "done": True,
        }
        assert dep["storage"] == {
            "dir": str(tmp_path / "data" / "deployments" / "m"),
            "limit_gb": 100.0,
            "model_bytes": TOTAL,
        }
        model_dir = Path(dep["model_path"])
        assert model_dir.is_relative_to(tmp_path / "data" / "deployments" / "m")
        assert (model_dir / "weights.bin").read_bytes() == WEIGHTS

        # A scale-up starts a third worker from the same files.
        srv.patch("m", {"min_workers": 3})
        srv.wait_for("m", lambda d: d["ready_workers"] == 3)
        assert dict(hub.downloads) == {
            ("acme/tiny", "config.json"): 1,
            ("acme/tiny", "weights.bin"): 1,
        }

        # A restart of torpor finds the model in the storage: no request to the Hub at all.
        before = len(hub.requests)
        srv.stop()
        srv2 = server_factory(tmp_path / "data")
        srv2.wait_for("m", lambda d: d["ready_workers"] == 3)
        assert len(hub.requests) == before
        with srv2.api() as c:
            stored = [
                e for e in c.get("/api/deployments/m/events").json()["data"] if e["kind"] == "model"
            ]
        assert len(stored) == 1 and f"{TOTAL} bytes" in stored[0]["message"]

        # Deleting removes the workers, the storage and the model files.
        with srv2.api() as c:
            assert c.delete("/api/deployments/m").status_code == 200
        assert not (tmp_path / "data" / "deployments" / "m").exists()
        assert not model_dir.exists()


def test_failures_end_in_failed_with_reasons(server: TorporServer, tmp_path: Path) -> None:
    with HubServer(REPOS, gated=frozenset({"acme/gated"})) as hub:
        server.deploy(model_spec("gated", hub.url, model="acme/gated"))
        token_env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token}
        spec_file = tmp_path / "gated-ok.json"
        spec_file.write_text(
            json.dumps(model_spec("gated-ok", hub.url, model="acme/gated", env=token_env))
        )
        server.deploy(model_spec("small", hub.url, storage_gb=0.0001))
        offline = f"http://127.0.0.1:{free_port()}"
        server.deploy(model_spec("offline", offline))

        done = ("running", "failed")
        gated = server.wait_for("gated", lambda d: d["state"] in done)
        assert gated["state"] == "failed" and gated["status"] == "error"
        assert gated["reason"] == AUTH_ERROR
        # The CLI waits with a progress bar and reports what was stored.
        cli = subprocess.run(
            [
                *(sys.executable, "-m", "torpor", "deploy", "gated-ok", "--file", str(spec_file)),
                *("--wait", "--url", server.url, "--api-key", server.admin_key),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert "model: huggingface:acme/gated (0.0 MB stored)" in cli.stdout
        ok = server.wait_for("gated-ok", lambda d: d["state"] in done)
        assert ok["state"] == "running", ok["reason"]
        assert ok["storage"]["model_bytes"] == 1002

        small = server.wait_for("small", lambda d: d["state"] in done)
        assert small["state"] == "failed"
        assert small["reason"].startswith("storage limit exceeded: acme/tiny needs")
        assert hub.file_downloads("acme/tiny") == 0  # refused before fetching

        off = server.wait_for("offline", lambda d: d["state"] in done)
        assert off["state"] == "failed"
        assert "Hugging Face Hub at" in off["reason"] and "cannot be reached" in off["reason"]

        # A request to a failed deployment says why.
        with server.api() as c:
            r = c.post("/v1/chat/completions", json={"model": "gated", "messages": []})
        assert r.status_code == 404 and AUTH_ERROR in r.json()["error"]["message"]


def test_hub_download_revision_patterns_and_limit(tmp_path: Path) -> None:
    with HubServer(REPOS) as hub:
        progress = DownloadProgress("acme/tiny")
        size = hub_download(
            "acme/tiny",
            tmp_path / "m",
            revision="main",
            allow_patterns=["*.json"],
            ignore_patterns=[],
            token=None,
            endpoint=hub.url,
            limit_bytes=10**9,
            progress=progress,
            cancelled=threading.Event(),
        )
        assert size == len(REPOS["acme/tiny"]["config.json"])
        assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json"]
        assert ("acme/tiny", "weights.bin") not in hub.downloads
        assert ("GET", "/api/models/acme/tiny/revision/main") in hub.requests

        with pytest.raises(ModelError, match="not found on the Hugging Face Hub"):
            hub_download(
                "acme/none",
                tmp_path / "n",
                revision=None,
                allow_patterns=[],
                ignore_patterns=[],
                token=None,
                endpoint=hub.url,
                limit_bytes=10**9,
                progress=DownloadProgress("x"),
                cancelled=threading.Event(),
            )


@pytest.mark.parametrize(
    ("framework", "model", "kind", "ref"),
    [
        ("vllm", "Qwen/Qwen2.5-0.5B-Instruct", "huggingface", "Qwen/Qwen2.5-0.5B-Instruct"),
        ("vllm", "hf://org/m", "huggingface", "org/m"),
        ("llama.cpp", "smollm2-135m-instruct", "bundled", "smollm2-135m-instruct"),
        ("embed", "all-minilm-l6-v2", "bundled", "all-minilm-l6-v2"),
        ("ollama", "llama3.2:1b", "ollama", "llama3.2:1b"),
        ("llama.cpp", "/models/x.gguf", "local", "/models/x.gguf"),
        ("llama.cpp", "models/x.gguf", "local", "models/x.gguf"),
        ("vllm", "./org/m", "local", "./org/m"),
    ],
)
def test_sources(framework: str, model: str, kind: str, ref: str) -> None:
    from torpor.modelstore import source_for
    from torpor.spec import DeploymentSpec

    spec = DeploymentSpec.model_construct(name="x", framework=framework, model=model)
    source = source_for(spec, needs_model=True)
    assert (source.kind.value, source.ref) == (kind, ref)
