"""2. Cold-start breakdown: the engine started by hand (process start to ready, to first
token) against torpor from scale-to-zero to first token, with torpor's overhead split
into stages from the worker's `started_at`/`ready_at` and the client's timestamps:

  request sent -> worker started   admission + controller wake-up
  worker started -> ready          worker start + engine boot + readiness detection
  ready -> first token             routing + the engine's prompt

The engine's own boot is measured with readiness polled every 50 ms (as torpor does) and
every 5 ms, so the probe interval's share is visible.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import (
    ADMIN_KEY,
    Processes,
    Torpor,
    fake_engine_argv,
    fake_spec,
    free_port,
    llama_argv,
    llama_available,
    llama_spec,
    machine_info,
    start_torpor,
)
from bench.load import Call, median, new_session, percentile, send
from bench.report import Result, Table, Target, plot

PROMPT = [{"role": "user", "content": "Say hello in five words."}]


@dataclass(frozen=True)
class Config:
    llama_repeats: int = 5
    fake_repeats: int = 5
    max_tokens: int = 8
    # The fake engine's simulated model load.
    fake_startup_ms: float = 300.0
    # Readiness poll periods of the engine started by hand.
    hand_polls_s: tuple[float, ...] = (0.05, 0.005)


SMOKE = Config(llama_repeats=1, fake_repeats=1, hand_polls_s=(0.005,))


async def _poll_ready(
    session: aiohttp.ClientSession, url: str, interval_s: float, timeout_s: float
) -> float:
    deadline = time.perf_counter() + timeout_s
    t = aiohttp.ClientTimeout(total=1.0)
    while time.perf_counter() < deadline:
        try:
            async with session.get(url, timeout=t) as r:
                await r.read()
                if r.status == 200:
                    return time.perf_counter()
        except (aiohttp.ClientError, TimeoutError, OSError):
            pass
        await asyncio.sleep(interval_s)
    raise RuntimeError(f"{url} not ready in {timeout_s}s")


async def _by_hand(
    session: aiohttp.ClientSession,
    procs: Processes,
    argv: list[str],
    port: int,
    health: str,
    model: str,
    interval_s: float,
    cfg: Config,
) -> dict[str, float]:
    """Start the engine, poll readiness every `interval_s`, send the first request."""
    t0 = time.perf_counter()
    proc = procs.start(f"hand-{port}", argv)
    try:
        url = f"http://127.0.0.1:{port}"
        ready = await _poll_ready(session, url + health, interval_s, 120)
        call = Call.chat(url + "/v1", model, PROMPT, True, max_tokens=cfg.max_tokens)
        s = await send(session, call)
        if not s.ok or s.ttft is None:
            raise RuntimeError(f"first request to the hand-started engine failed: {s}")
        return {
            "ready_ms": (ready - t0) * 1000,
            "first_token_ms": (s.start + s.ttft - t0) * 1000,
            "prompt_ms": (s.start + s.ttft - ready) * 1000,
        }
    finally:
        await asyncio.to_thread(procs.stop, proc)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def _torpor_cold(
    session: aiohttp.ClientSession, torpor: Torpor, name: str, cfg: Config
) -> dict[str, float]:
    """One request to a deployment at zero; stages from the API and client clocks."""
    dep = await asyncio.to_thread(torpor.get, name)
    if any(w["state"] not in ("stopped", "failed") for w in dep["workers"]):
        raise RuntimeError(f"{name} is not at zero: {dep['workers']}")
    call = Call.chat(
        torpor.url + "/v1",
        name,
        PROMPT,
        True,
        {"Authorization": f"Bearer {ADMIN_KEY}"},
        max_tokens=cfg.max_tokens,
    )
    wall0 = time.time()
    s = await send(session, call)
    if not s.ok or s.ttft is None:
        raise RuntimeError(f"cold request through torpor failed: {s}")
    first_token_wall = wall0 + s.ttft
    dep = await asyncio.to_thread(torpor.get, name)
    # A held stream starts before a worker is picked, so the newest worker is this one.
    w = max(dep["workers"], key=lambda w: _ts(w["started_at"]))
    if w["ready_at"] is None:
        raise RuntimeError(f"worker {w['id']} has no ready_at: {w}")
    started, ready = _ts(w["started_at"]), _ts(w["ready_at"])
    return {
        "first_token_ms": s.ttft * 1000,
        "admission_ms": (started - wall0) * 1000,
        "start_to_ready_ms": (ready - started) * 1000,
        "ready_to_first_token_ms": (first_token_wall - ready) * 1000,
    }


async def _wait_zero(torpor: Torpor, name: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dep = await asyncio.to_thread(torpor.get, name)
        if all(w["state"] in ("stopped", "failed") for w in dep["workers"]):
            await asyncio.sleep(0.3)  # the process is gone and its port free
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{name} did not scale to zero")


def _med(rows: list[dict[str, float]], key: str) -> float | None:
    return median([r[key] for r in rows])


async def _engine(
    label: str,
    session: aiohttp.ClientSession,
    procs: Processes,
    torpor: Torpor,
    spec: dict[str, Any],
    argv_for: Any,
    health: str,
    repeats: int,
    cfg: Config,
) -> dict[str, Any]:
    torpor.deploy(spec)
    torpor.wait_for(spec["name"], lambda d: d["state"] == "running", timeout_s=60)
    hand50: list[dict[str, float]] = []
    hand5: list[dict[str, float]] = []
    cold: list[dict[str, float]] = []
    for rep in range(repeats):
        for interval, acc in ((0.05, hand50), (0.005, hand5)):
            if interval not in cfg.hand_polls_s:
                continue
            port = free_port()
            acc.append(
                await _by_hand(
                    session, procs, argv_for(port), port, health, spec["name"], interval, cfg
                )
            )
        await _wait_zero(torpor, spec["name"])
        cold.append(await _torpor_cold(session, torpor, spec["name"], cfg))
        print(f"  coldstart {label} rep={rep} hand5={hand5[-1]} torpor={cold[-1]}", flush=True)
    out: dict[str, Any] = {"hand_poll_50ms": hand50, "hand_poll_5ms": hand5, "torpor": cold}
    base_ready = _med(hand5, "ready_ms")
    base_prompt = _med(hand5, "prompt_ms")
    base_first = _med(hand5, "first_token_ms")
    t_first = _med(cold, "first_token_ms")
    summary = {
        "hand_ready_ms_poll_50": _med(hand50, "ready_ms"),
        "hand_ready_ms_poll_5": base_ready,
        "hand_first_token_ms_poll_50": _med(hand50, "first_token_ms"),
        "hand_first_token_ms_poll_5": base_first,
        "hand_prompt_ms": base_prompt,
        "torpor_first_token_ms": t_first,
        "torpor_first_token_p90_ms": percentile([r["first_token_ms"] for r in cold], 90),
        "admission_ms": _med(cold, "admission_ms"),
        "start_to_ready_ms": _med(cold, "start_to_ready_ms"),
        "ready_to_first_token_ms": _med(cold, "ready_to_first_token_ms"),
    }
    if None not in (t_first, base_first, base_ready, base_prompt):
        assert t_first is not None and base_first is not None
        assert base_ready is not None and base_prompt is not None
        summary["overhead_ms"] = t_first - base_first
        first50 = _med(hand50, "first_token_ms")
        summary["overhead_vs_poll_50_ms"] = t_first - first50 if first50 is not None else None
        s2r = summary["start_to_ready_ms"] or 0.0
        r2f = summary["ready_to_first_token_ms"] or 0.0
        summary["stage_admission_ms"] = summary["admission_ms"]
        summary["stage_start_and_readiness_ms"] = s2r - base_ready
        summary["stage_routing_ms"] = r2f - base_prompt
    out["summary"] = summary
    return out


async def run(out_dir: Path, smoke: bool, work: Path) -> Result:
    cfg = SMOKE if smoke else Config()
    t_start = time.monotonic()
    result = Result(
        benchmark="coldstart",
        title="Cold-start breakdown: engine by hand vs torpor from zero",
        smoke=smoke,
        machine=machine_info(),
        config=dict(cfg.__dict__),
        data={},
    )
    procs = Processes(work / "logs-coldstart")
    why_no_llama = llama_available()
    try:
        # Fast polling of starting workers is torpor's default (50 ms); idle workers of
        # these deployments stop 0.2 s after their request so each repeat starts at zero.
        torpor = start_torpor(procs, work / "torpor-coldstart")
        async with new_session() as session:
            fake_args = ["--startup-delay-ms", str(cfg.fake_startup_ms), "--tokens", "8"]
            fake = fake_spec("fake-cold", fake_args, idle_timeout_s=0.2)
            result.data["fake"] = await _engine(
                "fake",
                session,
                procs,
                torpor,
                fake,
                lambda port: fake_engine_argv(port, tokens=8, startup_delay_ms=cfg.fake_startup_ms),
                "/health",
                cfg.fake_repeats,
                cfg,
            )
            if why_no_llama is None:
                result.data["llama"] = await _engine(
                    "llama",
                    session,
                    procs,
                    torpor,
                    llama_spec("smol-cold", idle_timeout_s=0.2),
                    lambda port: llama_argv("smol-cold", port),
                    "/v1/models",
                    cfg.llama_repeats,
                    cfg,
                )
            else:
                result.notes.append(f"llama.cpp part not run: {why_no_llama}")
    finally:
        procs.close()
    _report(result, out_dir, cfg)
    result.wall_s = time.monotonic() - t_start
    return result


def _report(result: Result, out_dir: Path, cfg: Config) -> None:
    rows = []
    for key, label in (("llama", "llama.cpp SmolLM2"), ("fake", "fake engine")):
        if key not in result.data:
            continue
        s = result.data[key]["summary"]
        n = len(result.data[key]["torpor"])
        rows += [
            [label, "by hand, poll 5 ms: start → ready", s["hand_ready_ms_poll_5"], n],
            [label, "by hand, poll 50 ms: start → ready", s["hand_ready_ms_poll_50"], n],
            [label, "by hand: ready → first token", s["hand_prompt_ms"], n],
            [label, "by hand, poll 5 ms: start → first token", s["hand_first_token_ms_poll_5"], n],
            [
                label,
                "by hand, poll 50 ms: start → first token",
                s["hand_first_token_ms_poll_50"],
                n,
            ],
            [label, "torpor: request → first token (from zero)", s["torpor_first_token_ms"], n],
            [label, "  stage: request → worker started (admission)", s["admission_ms"], n],
            [label, "  stage: worker started → ready", s["start_to_ready_ms"], n],
            [label, "  stage: ready → first token", s["ready_to_first_token_ms"], n],
            [label, "torpor overhead vs engine (poll 5 ms)", s.get("overhead_ms"), n],
            [label, "torpor overhead vs engine (poll 50 ms)", s.get("overhead_vs_poll_50_ms"), n],
            [label, "  of which admission + controller wake", s.get("stage_admission_ms"), n],
            [
                label,
                "  of which worker start + readiness detection",
                s.get("stage_start_and_readiness_ms"),
                n,
            ],
            [label, "  of which routing", s.get("stage_routing_ms"), n],
        ]
    result.tables.append(Table("Medians (ms)", ["engine", "measure", "ms", "repeats"], rows))
    main = "llama" if "llama" in result.data else "fake"
    s = result.data[main]["summary"]
    over = s.get("overhead_ms")
    result.targets.append(
        Target(
            f"cold-start overhead over the engine's own boot ({main})",
            "< 100 ms",
            f"{over:.0f} ms" if over is not None else "-",
            over < 100 if over is not None else None,
            "engine boot measured by hand with a 5 ms readiness poll",
        )
    )
    result.notes += [
        "Every repeat starts both from nothing: the engine by hand (a new process) and torpor "
        "from zero workers (idle_timeout_s 0.2, the bench waits for the worker to stop).",
        f"Requests stream with max_tokens {cfg.max_tokens}; first token = first SSE chunk "
        "with content.",
        "Stages: started_at/ready_at are the worker's timestamps in GET /api/deployments/"
        "{name}; the request and first-token instants are the client's (same host clock).",
        "'worker start + readiness detection' = (worker started → ready) minus the engine's "
        "own start → ready (5 ms poll); 'routing' = (ready → first token) minus the engine's "
        "own ready → first token.",
    ]

    def draw(plt: Any) -> None:
        engines = [k for k in ("llama", "fake") if k in result.data]
        _fig, axes = plt.subplots(1, len(engines), figsize=(6 * len(engines), 4), squeeze=False)
        for ax, key in zip(axes[0], engines, strict=True):
            s = result.data[key]["summary"]
            labels = ["by hand\n(poll 5 ms)", "by hand\n(poll 50 ms)", "torpor\nfrom zero"]
            boot = [s["hand_ready_ms_poll_5"] or 0, s["hand_ready_ms_poll_50"] or 0]
            prompt = [
                s["hand_prompt_ms"] or 0,
                (s["hand_first_token_ms_poll_50"] or 0) - (s["hand_ready_ms_poll_50"] or 0),
            ]
            ax.bar(labels[:2], boot, color="tab:blue", label="start → ready")
            ax.bar(labels[:2], prompt, bottom=boot, color="tab:orange", label="ready → first token")
            adm = s["admission_ms"] or 0
            s2r = s["start_to_ready_ms"] or 0
            r2f = s["ready_to_first_token_ms"] or 0
            ax.bar(labels[2], adm, color="tab:red", label="admission")
            ax.bar(labels[2], s2r, bottom=adm, color="tab:blue")
            ax.bar(labels[2], r2f, bottom=adm + s2r, color="tab:orange")
            ax.set_ylabel("ms")
            ax.set_title(key)
            ax.legend()

    plot(result, out_dir, "coldstart.png", draw)
