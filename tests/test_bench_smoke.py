"""The benchmark harness keeps working: `torpor bench all --smoke` (seconds, small
counts, no LiteLLM install, one tiny llama.cpp cold start) writes sane results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO

BENCHMARKS = ("overhead", "coldstart", "burst", "controlplane", "affinity", "metering")


def _non_negative(value: Any, where: str) -> None:
    """Every latency-like number in the results is >= 0."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k.endswith("_ms") and isinstance(v, dict):
                for stat, x in v.items():
                    if stat != "n" and x is not None:
                        assert x >= 0, f"{where}.{k}.{stat} = {x}"
            elif k in ("p50", "p99", "rps", "wall_s") and isinstance(v, int | float):
                assert v >= 0, f"{where}.{k} = {v}"
            else:
                _non_negative(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _non_negative(v, f"{where}[{i}]")


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "torpor", "bench", "all", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (out / "README.md").exists()
    results = {}
    for name in BENCHMARKS:
        assert (out / f"{name}.md").exists(), name
        data = json.loads((out / f"{name}.json").read_text())
        assert data["benchmark"] == name and data["smoke"] is True
        assert data["machine"]["cpu_count"] and data["machine"]["python"]
        assert data["machine"]["packages"]["torpor"]
        if name != "affinity":  # the issue sets no target for affinity
            assert data["targets"], name
        _non_negative(data["data"], name)
        results[name] = data["data"]

    cells = results["overhead"]["cells"]
    assert {c["target"] for c in cells} == {"direct", "torpor"}
    assert all(c["rps"] > 0 and sum(c["errors"].values()) == 0 for c in cells)
    assert results["overhead"]["litellm_status"] == "skipped in smoke mode"
    assert all(s["ok"] == s["open_streams"] for s in results["overhead"]["sweep"])

    fake = results["coldstart"]["fake"]["summary"]
    assert fake["torpor_first_token_ms"] > 0 and fake["hand_ready_ms_poll_5"] > 0

    burst = results["burst"]["burst-fake"]
    assert burst["completed"] == burst["requests"] > 0
    assert 1 <= burst["workers_started"] <= 2

    cp = results["controlplane"]
    assert cp["in_process"]["healthy_workers"] == 100
    assert cp["http"]["latency_ms"]["n"] > 0

    chats = results["affinity"]["chats"]
    assert chats["affinity"] and chats["none"]
    moved, total = results["affinity"]["worker_switches"]["affinity"]
    assert total > 0 and moved == 0

    metering = results["metering"]
    assert all(r["rps_on"] > 0 and r["rps_off"] > 0 for r in metering["request_path"]["rows"])
    assert metering["queries"]["summary_requests"] == metering["queries"]["events"]
