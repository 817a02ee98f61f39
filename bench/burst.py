"""3. Burst from zero: concurrent streaming requests to a cold deployment with max_workers 2
(fake engine and llama.cpp): how many completed, errors by code, TTFT P50/P99."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    ADMIN_KEY,
    Processes,
    fake_spec,
    llama_available,
    llama_spec,
    machine_info,
    start_torpor,
)
from bench.load import Call, errors_by_code, new_session, open_at_once, send, summary_ms
from bench.report import Result, Table, Target, plot

PROMPT = [{"role": "user", "content": "Name a colour."}]


@dataclass(frozen=True)
class Config:
    requests: int = 100
    max_workers: int = 2
    fake_startup_ms: float = 1000.0
    fake_tokens: int = 16
    fake_token_delay_ms: float = 10.0
    llama: bool = True
    llama_max_tokens: int = 16


SMOKE = Config(requests=20, fake_startup_ms=200.0, llama=False)


async def run(out_dir: Path, smoke: bool, work: Path) -> Result:
    cfg = SMOKE if smoke else Config()
    t_start = time.monotonic()
    result = Result(
        benchmark="burst",
        title=f"Burst from zero: {cfg.requests} concurrent requests, max_workers {cfg.max_workers}",
        smoke=smoke,
        machine=machine_info(),
        config=dict(cfg.__dict__),
        data={},
    )
    why_no_llama = llama_available() if cfg.llama else "skipped in smoke mode"
    procs = Processes(work / "logs-burst")
    try:
        torpor = start_torpor(procs, work / "torpor-burst")
        engine_args = [
            "--startup-delay-ms",
            str(cfg.fake_startup_ms),
            "--tokens",
            str(cfg.fake_tokens),
            "--token-delay-ms",
            str(cfg.fake_token_delay_ms),
        ]
        specs: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
            ("fake engine", fake_spec("burst-fake", engine_args, max_workers=cfg.max_workers), {})
        ]
        if why_no_llama is None:
            extra = {"max_tokens": cfg.llama_max_tokens}
            specs += [
                (
                    "llama.cpp SmolLM2 (concurrency 4, default)",
                    llama_spec("burst-llama", max_workers=cfg.max_workers),
                    extra,
                ),
                (
                    "llama.cpp SmolLM2 (concurrency 1)",
                    llama_spec("burst-llama-c1", max_workers=cfg.max_workers, concurrency=1),
                    extra,
                ),
            ]
        else:
            result.notes.append(f"llama.cpp part not run: {why_no_llama}")
        async with new_session() as session:
            for label, spec, extra in specs:
                torpor.deploy(spec)
                torpor.wait_for(spec["name"], lambda d: d["state"] == "running", timeout_s=60)
                call = Call.chat(
                    torpor.url + "/v1",
                    spec["name"],
                    PROMPT,
                    True,
                    {"Authorization": f"Bearer {ADMIN_KEY}"},
                    timeout_s=300,
                    **extra,
                )
                t0 = time.perf_counter()
                samples = await open_at_once(functools.partial(send, session, call), cfg.requests)
                wall = time.perf_counter() - t0
                dep = torpor.get(spec["name"])
                ok = [s for s in samples if s.ok]
                started = len(dep["workers"])
                entry = {
                    "engine": label,
                    "deployment": spec["name"],
                    "spec": {k: v for k, v in spec.items() if k != "options"},
                    "requests": cfg.requests,
                    "completed": len(ok),
                    "errors": errors_by_code(samples),
                    "ttft_ms": summary_ms([s.ttft for s in ok if s.ttft is not None]),
                    "latency_ms": summary_ms([s.latency for s in ok]),
                    "wall_s": round(wall, 2),
                    "workers_started": started,
                    "ttfts_ms": sorted(round(s.ttft * 1000, 2) for s in ok if s.ttft),
                }
                result.data[spec["name"]] = entry
                print(
                    f"  burst {label}: completed {len(ok)}/{cfg.requests} "
                    f"errors={entry['errors']} wall={wall:.1f}s",
                    flush=True,
                )
    finally:
        procs.close()
    _report(result, out_dir, cfg)
    result.wall_s = time.monotonic() - t_start
    return result


def _report(result: Result, out_dir: Path, cfg: Config) -> None:
    entries = list(result.data.values())
    rows = [
        [
            e["engine"],
            e["requests"],
            e["completed"],
            ", ".join(f"{k}: {v}" for k, v in e["errors"].items()) or "none",
            e["ttft_ms"]["p50"],
            e["ttft_ms"]["p99"],
            e["latency_ms"]["p99"],
            e["workers_started"],
            e["wall_s"],
        ]
        for e in entries
    ]
    result.tables.append(
        Table(
            "Burst",
            [
                *("engine", "sent", "completed", "errors", "TTFT P50 ms", "TTFT P99 ms"),
                *("P99 ms", "workers", "wall s"),
            ],
            rows,
        )
    )
    for e in entries:
        lost = e["requests"] - e["completed"]
        result.targets.append(
            Target(
                f"lost requests in the burst ({e['engine']})",
                "0",
                str(lost),
                lost == 0,
            )
        )
    result.notes += [
        f"All {cfg.requests} streaming requests are opened at once against a deployment at "
        f"zero workers (min_workers 0, max_workers {cfg.max_workers}, concurrency 4 per "
        "worker, max_queue 100, wait_time_s 120: the defaults); the llama.cpp deployment "
        "runs a second time with concurrency 1.",
        f"Fake engine: {cfg.fake_startup_ms:.0f} ms simulated model load, {cfg.fake_tokens} "
        f"tokens x {cfg.fake_token_delay_ms} ms. llama.cpp: max_tokens {cfg.llama_max_tokens}.",
        "'workers' counts the workers the deployment started during the burst.",
    ]

    def draw(plt: Any) -> None:
        _fig, ax = plt.subplots(figsize=(7, 4))
        for e in entries:
            ys = e["ttfts_ms"]
            ax.plot(range(1, len(ys) + 1), ys, label=e["engine"])
        ax.set_xlabel("request (sorted by TTFT)")
        ax.set_ylabel("TTFT (ms)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()

    plot(result, out_dir, "burst.png", draw)
