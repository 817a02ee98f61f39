"""LiteLLM's proxy as a comparison gateway: a pinned version installed by the bench into its
own virtual environment (bench/.venv-litellm, ignored by git), never a torpor dependency."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import REPO, Proc, Processes, free_port, wait_http

LITELLM_VERSION = "1.100.5"
VENV = REPO / "bench" / ".venv-litellm"


@dataclass
class Install:
    ok: bool
    version: str | None
    detail: str
    seconds: float


def _installed_version() -> str | None:
    python = VENV / "bin" / "python"
    if not python.exists():
        return None
    try:
        out = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def ensure_installed(log_path: Path, timeout_s: float = 1200.0) -> Install:
    """Install `litellm[proxy]==LITELLM_VERSION` into bench/.venv-litellm (once)."""
    t0 = time.monotonic()
    have = _installed_version()
    if have == LITELLM_VERSION and (VENV / "bin" / "litellm").exists():
        return Install(True, have, "already installed in bench/.venv-litellm", 0.0)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        steps = [
            [sys.executable, "-m", "venv", str(VENV)],
            [str(VENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
        ]
        for argv in steps:
            try:
                code = subprocess.run(
                    argv, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
                ).returncode
            except (OSError, subprocess.SubprocessError) as exc:
                return Install(False, None, f"{argv[0]}: {exc}", time.monotonic() - t0)
            if code != 0:
                tail = log_path.read_text(errors="replace").splitlines()[-5:]
                detail = f"`{' '.join(argv[1:3])}` exited {code}: " + " / ".join(tail)
                return Install(False, None, detail, time.monotonic() - t0)
    have = _installed_version()
    if have != LITELLM_VERSION:
        return Install(False, have, f"installed version is {have}", time.monotonic() - t0)
    return Install(True, have, "installed by the bench", time.monotonic() - t0)


def start(procs: Processes, models: dict[str, str], work_dir: Path) -> tuple[Proc, str]:
    """LiteLLM's proxy routing each model name to an OpenAI-compatible base URL (with /v1).

    Default settings apart from the model list; the config is JSON (a subset of YAML)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{name}",
                    "api_base": base,
                    "api_key": "sk-unused",
                },
            }
            for name, base in models.items()
        ],
    }
    path = work_dir / "litellm-config.yaml"
    path.write_text(json.dumps(config, indent=2))
    port = free_port()
    proc = procs.start(
        "litellm",
        [
            *(str(VENV / "bin" / "litellm"), "--config", str(path)),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        # Loopback only: use the cost map shipped in the package instead of fetching one.
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"},
        cwd=work_dir,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health/liveliness", proc, timeout_s=240, interval_s=0.2)
    return proc, url
