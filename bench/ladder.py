"""Sleep/wake ladder: a bursty day-long trace, compressed in time, replayed against one
deployment of the fake engine with GPU-like delays (boot 20 s, sleep 0.5 s, wake 0.5 s),
under four policies:

  always_on       min_workers 1: never a cold start, the GPU held all day
  scale_to_zero   idle_timeout_s 5: stopped when idle, every burst after a gap cold-starts
  ladder          sleep_after_s 1, then asleep until demand (idle_timeout_s a day)
  ladder_prewarm  the ladder with prewake "history": the same day was replayed on the same
                  weekday of the last 4 weeks (seeded into the hourly usage rollups), and
                  torpor's ladder clock runs 3600/hour_s times faster from the replay's
                  start, so the hours of the week line up with the compressed day

Each run starts with one ready worker. TTFT is measured by the client (streamed). GPU time
is integrated from the worker states torpor reports (polled every 0.2 s): awake seconds
(starting or healthy) and sleeping seconds. Billed GPU-seconds are given twice: sleeping at
the full GPU rate (torpor's default while a sleeping worker still holds its devices) and
at zero (an engine whose sleep frees the GPU, e.g. vLLM level 1, priced that way).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bench.harness import ADMIN_KEY, Processes, Torpor, fake_spec, machine_info, start_torpor
from bench.load import Call, Sample, new_session, percentile, send
from bench.report import Result, Table, Target
from torpor.metering.tables import UsageHourlyRow
from torpor.metering.writes import upsert_add
from torpor.store import open_store

PROMPT = [{"role": "user", "content": "Say hello."}]
ENGINE_ARGS = [
    "--startup-delay-ms", "20000", "--sleep-delay-ms", "500", "--wake-delay-ms", "500",
    "--tokens", "8", "--first-token-delay-ms", "30", "--token-delay-ms", "10",
]  # fmt: skip
POLICIES: dict[str, dict[str, Any]] = {
    "always_on": {"min_workers": 1, "idle_timeout_s": 86_400},
    "scale_to_zero": {"min_workers": 0, "idle_timeout_s": 5},
    "ladder": {"min_workers": 0, "sleep_after_s": 1, "idle_timeout_s": 86_400},
    "ladder_prewarm": {
        "min_workers": 0,
        "sleep_after_s": 1,
        "idle_timeout_s": 86_400,
        "prewake": "history",
    },
}
# The replayed day in the ladder's clock (a Monday); its history is the same day of the 4
# weeks before. Torpor's ladder clock reaches it when the replay starts, which is this long
# after torpor is started (deploy and the 20 s boot fit in it).
PREWARM_DAY = datetime(2026, 11, 2, tzinfo=UTC)
HISTORY_WEEKS = 4
REPLAY_MARGIN_S = 45.0


@dataclass(frozen=True)
class Config:
    hour_s: float = 6.0  # one hour of the day, compressed
    seed: int = 15


SMOKE = Config(hour_s=1.0)

# Bursts per hour of the day: quiet night, a morning and an afternoon peak, a few stray
# requests in the evening.
BURSTS_PER_HOUR = [0, 0, 0, 1, 0, 0, 0, 1, 2, 3, 3, 2, 1, 0, 2, 3, 3, 2, 1, 1, 0, 1, 0, 0]


def trace(cfg: Config) -> list[float]:
    """Arrival offsets in seconds: bursts of 3-12 requests over about a second."""
    rng = random.Random(cfg.seed)
    out: list[float] = []
    for hour, bursts in enumerate(BURSTS_PER_HOUR):
        for _ in range(bursts):
            start = (hour + rng.random() * 0.8) * cfg.hour_s
            for _ in range(rng.randint(3, 12)):
                out.append(start + rng.random() * 1.0)
    return sorted(out)


async def _watch(torpor: Torpor, name: str, stop: asyncio.Event) -> dict[str, float]:
    """Integrate awake and sleeping worker-seconds from the API's worker states."""
    totals = {"awake_s": 0.0, "sleeping_s": 0.0}
    last = time.perf_counter()
    async with new_session() as session:
        url = f"{torpor.url}/api/deployments/{name}"
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        while not stop.is_set():
            async with session.get(url, headers=headers) as r:
                dep = await r.json()
            now = time.perf_counter()
            dt, last = now - last, now
            states = [w["state"] for w in dep["workers"]]
            totals["awake_s"] += dt * sum(s in ("provisioning", "healthy") for s in states)
            totals["sleeping_s"] += dt * states.count("sleeping")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    return totals


async def _replay(torpor: Torpor, name: str, arrivals: list[float]) -> list[Sample]:
    call = Call.chat(
        torpor.url + "/v1", name, PROMPT, True, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    async with new_session() as session:
        t0 = time.perf_counter()

        async def one(at: float) -> Sample:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
            return await send(session, call)

        return list(await asyncio.gather(*(one(a) for a in arrivals)))


async def _seed_history(torpor: Torpor, name: str) -> None:
    """The hourly rollups of the same day in the last HISTORY_WEEKS weeks."""
    store = await open_store(f"sqlite+aiosqlite:///{torpor.data_dir / 'torpor.db'}")
    try:
        async with AsyncSession(store.engine) as s, s.begin():
            for week in range(1, HISTORY_WEEKS + 1):
                day = PREWARM_DAY - timedelta(weeks=week)
                for hour, bursts in enumerate(BURSTS_PER_HOUR):
                    if not bursts:
                        continue
                    keys = {"hour": day + timedelta(hours=hour), "deployment": name}
                    counts = {"requests": bursts * 7, "errors": 0, "prompt_tokens": 0,
                              "completion_tokens": 0, "latency_ms_sum": 0.0,
                              "ttft_ms_sum": 0.0, "ttft_count": 0, "cold_starts": 0,
                              "cost_nusd": 0}  # fmt: skip
                    await upsert_add(s, UsageHourlyRow, {**keys, "key_id": "history"}, counts)
    finally:
        await store.close()


async def _policy(procs: Processes, work: Path, policy: str, cfg: Config) -> dict[str, Any]:
    replay_at: float | None = None
    env: dict[str, str] = {}
    if POLICIES[policy].get("prewake") == "history":
        replay_at = time.time() + REPLAY_MARGIN_S
        env = {
            "TORPOR_LADDER_CLOCK_SPEEDUP": str(3600 / cfg.hour_s),
            "TORPOR_LADDER_CLOCK_START": PREWARM_DAY.isoformat(),
            "TORPOR_LADDER_CLOCK_REAL_START": str(replay_at),
        }
    torpor = start_torpor(procs, work / policy, name=f"torpor-{policy}", env=env)
    name = policy.replace("_", "-")
    if replay_at is not None:
        await _seed_history(torpor, name)
    fields = dict(POLICIES[policy])
    spec = fake_spec(
        name, ENGINE_ARGS, min_workers=1, max_workers=2, concurrency=8, wait_time_s=120
    )
    # The fake engine's vLLM sleep API, with its GPU-like delays (not a process freeze).
    spec["options"]["sleep_api"] = "vllm"
    torpor.deploy(spec)
    torpor.wait_for(name, lambda d: any(w["state"] == "healthy" for w in d["workers"]))
    with torpor.api() as c:
        c.patch(f"/api/deployments/{name}", json=fields).raise_for_status()
    late_s = 0.0
    if replay_at is not None:  # start when the ladder's clock reads the day's 00:00
        late_s = time.time() - replay_at
        await asyncio.sleep(max(0.0, -late_s))
    arrivals = trace(cfg)
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch(torpor, name, stop))
    samples = await _replay(torpor, name, arrivals)
    # The rest of the day: the trace's last hour runs out.
    rest = len(BURSTS_PER_HOUR) * cfg.hour_s - (arrivals[-1] if arrivals else 0.0)
    await asyncio.sleep(max(0.0, rest))
    stop.set()
    gpu = await watcher
    dep = torpor.get(name)
    ttfts = [s.ttft for s in samples if s.ok and s.ttft is not None]
    return {
        "requests": len(samples),
        "errors": sum(1 for s in samples if not s.ok),
        "p50_ttft_s": percentile(ttfts, 50),
        "p99_ttft_s": percentile(ttfts, 99),
        "awake_gpu_s": gpu["awake_s"],
        "sleeping_s": gpu["sleeping_s"],
        "billed_full_rate_s": gpu["awake_s"] + gpu["sleeping_s"],
        "billed_sleep_free_s": gpu["awake_s"],
        "wakes": sum(int(w.get("wakes") or 0) for w in dep["workers"]),
        "workers_started": len(dep["workers"]),
        "replay_late_s": max(0.0, late_s),
    }


async def run(out_dir: Path, smoke: bool, work: Path) -> Result:
    cfg = SMOKE if smoke else Config()
    rows: dict[str, dict[str, Any]] = {}
    for policy in POLICIES:
        procs = Processes(work / f"logs-{policy}")
        try:
            rows[policy] = await _policy(procs, work, policy, cfg)
        finally:
            procs.close()
    base = rows["always_on"]
    lad = rows["ladder"]
    pre = rows["ladder_prewarm"]
    table = Table(
        "A bursty day in "
        f"{len(BURSTS_PER_HOUR) * cfg.hour_s:.0f} s (boot 20 s, sleep 0.5 s, wake 0.5 s)",
        [
            "policy",
            "requests",
            "errors",
            "P50 TTFT s",
            "P99 TTFT s",
            "awake GPU-s",
            "sleeping s",
            "billed GPU-s (sleep at full rate)",
            "billed GPU-s (sleep free)",
            "wakes",
            "workers started",
        ],
        [
            [
                p,
                r["requests"],
                r["errors"],
                r["p50_ttft_s"],
                r["p99_ttft_s"],
                r["awake_gpu_s"],
                r["sleeping_s"],
                r["billed_full_rate_s"],
                r["billed_sleep_free_s"],
                r["wakes"],
                r["workers_started"],
            ]
            for p, r in rows.items()
        ],
    )
    p99_ok = (lad["p99_ttft_s"] or 1e9) <= 2 * (base["p99_ttft_s"] or 0)
    gpu_ratio = lad["billed_sleep_free_s"] / max(base["billed_full_rate_s"], 1e-9)
    return Result(
        benchmark="ladder",
        title="Sleep/wake ladder: bursty day replay",
        smoke=smoke,
        machine=machine_info(),
        config={"hour_s": cfg.hour_s, "seed": cfg.seed, "policies": POLICIES},
        data=rows,
        tables=[table],
        targets=[
            Target(
                "ladder P99 TTFT",
                "within 2x always-on's",
                f"{lad['p99_ttft_s']:.3f} s vs {base['p99_ttft_s']:.3f} s",
                p99_ok,
            ),
            Target(
                "ladder GPU-seconds",
                "at most 30% of always-on's",
                f"{gpu_ratio:.0%} with sleeping seconds free; "
                f"{lad['billed_full_rate_s'] / max(base['billed_full_rate_s'], 1e-9):.0%} "
                "with sleeping at the full GPU rate",
                gpu_ratio <= 0.30,
                "sleeping seconds are billed at the full rate by default (the worker holds "
                "its devices); the target holds only where sleep frees the GPU and is priced so",
            ),
            Target(
                "ladder + pre-warm P99 TTFT",
                "within 2x always-on's",
                f"{pre['p99_ttft_s']:.3f} s vs {base['p99_ttft_s']:.3f} s",
                (pre["p99_ttft_s"] or 1e9) <= 2 * (base["p99_ttft_s"] or 0),
            ),
            Target(
                "ladder + pre-warm GPU-seconds",
                "at most 30% of always-on's",
                f"{pre['billed_sleep_free_s'] / max(base['billed_full_rate_s'], 1e-9):.0%} with "
                "sleeping seconds free",
                pre["billed_sleep_free_s"] <= 0.30 * base["billed_full_rate_s"],
            ),
        ],
        notes=[
            "ladder + pre-warm: prewake 'history' learns from the same day replayed on the "
            f"same weekday of the last {HISTORY_WEEKS} weeks (hourly rollups seeded before the "
            "run); torpor's ladder clock (TORPOR_LADDER_CLOCK_*) runs "
            f"{3600 / cfg.hour_s:.0f}x faster, reading the day's 00:00 when the replay starts "
            f"(started {pre['replay_late_s']:.1f} s late). The worker is kept awake from 2 "
            "minutes (0.2 s here) before each hour in which a burst began after a quiet hour "
            "(hours 3, 7, 14 and 21) until that hour ends.",
        ],
    )
