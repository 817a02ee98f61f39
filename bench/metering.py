"""Metering's cost: the request path with metering on vs off in the same run (two torpor
processes in front of one fake engine, measured in alternation), and the dashboards'
queries over 1,000,000 usage events in SQLite."""

from __future__ import annotations

import functools
import random
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.harness import (
    ADMIN_KEY,
    Processes,
    machine_info,
    placeholder_spec,
    start_fake_engine,
    start_torpor,
)
from bench.load import Call, closed_loop, median, new_session, percentile, send
from bench.report import Result, Table, Target, plot
from torpor.metering import queries
from torpor.metering.budget import Caps
from torpor.metering.meter import Meter, RequestUsage
from torpor.metering.metrics import Metrics
from torpor.metering.pricing import Prices
from torpor.store import open_store

PROMPT = [{"role": "user", "content": "hello there"}]
# Metering off, on (admin key: no budget), on with a non-admin key without a budget (the
# key's own scope and route checks), on with a budgeted non-admin key (reservations).
# "budget" vs "key" isolates the reservation work.
MODES = ("on", "off", "key", "budget")


@dataclass(frozen=True)
class Config:
    concurrencies: tuple[int, ...] = (1, 10)
    repeats: int = 5
    duration_s: float = 4.0
    warmup_s: float = 0.5
    tokens: int = 16
    events: int = 1_000_000
    batch: int = 20_000
    deployments: int = 10
    keys: int = 20
    query_repeats: int = 15


SMOKE = Config(concurrencies=(1,), repeats=1, duration_s=0.5, warmup_s=0.1, events=20_000,
               batch=5_000, query_repeats=3)  # fmt: skip


async def run(out_dir: Path, smoke: bool, work: Path) -> Result:
    cfg = SMOKE if smoke else Config()
    t_start = time.monotonic()
    result = Result(
        benchmark="metering",
        title="Metering: request path with metering on vs off, summary queries at scale",
        smoke=smoke,
        machine=machine_info(),
        config=dict(cfg.__dict__),
        data={},
    )
    result.data["request_path"] = await _request_path(cfg, work)
    result.data["queries"] = await _queries(cfg, work)
    _report(result, out_dir, cfg)
    result.wall_s = time.monotonic() - t_start
    return result


async def _request_path(cfg: Config, work: Path) -> dict[str, Any]:
    procs = Processes(work / "logs-metering")
    rows: list[dict[str, Any]] = []
    try:
        _engine, engine_url = start_fake_engine(procs, "engine", tokens=cfg.tokens)
        port = int(engine_url.rsplit(":", 1)[1])
        gateways = {
            "on": start_torpor(procs, work / "metering-on", "torpor-on"),
            "off": start_torpor(
                procs, work / "metering-off", "torpor-off", env={"TORPOR_METERING_ENABLED": "false"}
            ),
        }
        for torpor in gateways.values():
            torpor.deploy(placeholder_spec("m", port))
            torpor.wait_for("m", lambda d: d["status"] == "ready", timeout_s=60)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        # The same metered gateway with a key under budgets: every request reserves its
        # prompt estimate and completion limit (and reads its body); the admin key has none.
        with gateways["on"].api() as c:
            r = c.post("/api/keys", json={"name": "budgeted", "budget_tokens_monthly": 2_000_000_000,
                                          "budget_usd_monthly": 1e9})  # fmt: skip
            r.raise_for_status()
            budgeted = {"Authorization": f"Bearer {r.json()['key']}"}
            r = c.post("/api/keys", json={"name": "plain"})
            r.raise_for_status()
            plain = {"Authorization": f"Bearer {r.json()['key']}"}
        targets = {"on": (gateways["on"], headers), "off": (gateways["off"], headers),
                   "key": (gateways["on"], plain), "budget": (gateways["on"], budgeted)}  # fmt: skip
        async with new_session() as session:
            for stream in (False, True):
                for conc in cfg.concurrencies:
                    runs: dict[str, list[dict[str, float]]] = {m: [] for m in targets}
                    # Rotate the order so drift on a shared machine hits all alike: each
                    # mode runs first, second, ... in turn.
                    for rep in range(cfg.repeats):
                        shift = rep % len(MODES)
                        order = MODES[shift:] + MODES[:shift]
                        for mode in order:
                            gw, hdrs = targets[mode]
                            call = Call.chat(gw.url + "/v1", "m", PROMPT, stream, hdrs)
                            load = await closed_loop(
                                functools.partial(send, session, call),
                                conc,
                                cfg.warmup_s,
                                cfg.duration_s,
                            )
                            ok = [s.latency for s in load.samples if s.ok]
                            runs[mode].append({
                                "rps": load.rps,
                                "p50_ms": (percentile(ok, 50) or 0) * 1000,
                                "p99_ms": (percentile(ok, 99) or 0) * 1000,
                                "errors": float(len(load.samples) - len(ok)),
                            })  # fmt: skip
                    row: dict[str, Any] = {"stream": stream, "concurrency": conc}
                    for mode in MODES:
                        for key in ("rps", "p50_ms", "p99_ms", "errors"):
                            row[f"{key}_{mode}"] = median([r[key] for r in runs[mode]])
                    row["rps_ratio"] = row["rps_on"] / row["rps_off"] if row["rps_off"] else None
                    row["p50_ratio"] = (
                        row["p50_ms_on"] / row["p50_ms_off"] if row["p50_ms_off"] else None
                    )
                    row["budget_rps_ratio"] = (
                        row["rps_budget"] / row["rps_on"] if row["rps_on"] else None
                    )
                    row["budget_p50_ratio"] = (
                        row["p50_ms_budget"] / row["p50_ms_on"] if row["p50_ms_on"] else None
                    )
                    # Reservations alone: budgeted key vs the same kind of key without one,
                    # as the median of the per-round ratios (paired: same round, same drift)
                    # with their spread.
                    for key in ("rps", "p50_ms"):
                        paired = [
                            b[key] / k[key]
                            for b, k in zip(runs["budget"], runs["key"], strict=True)
                            if k[key]
                        ]
                        row[f"reserve_{key}_ratio"] = median(paired) if paired else None
                        row[f"reserve_{key}_ratios"] = paired
                    for mode in MODES:
                        for key in ("rps", "p50_ms"):
                            vals = [r[key] for r in runs[mode]]
                            row[f"{key}_{mode}_range"] = (min(vals), max(vals))
                    row["runs"] = runs
                    rows.append(row)
                    print(f"  metering stream={stream} c={conc}: rps on/off/key/budget = "
                          f"{row['rps_on']:.0f}/{row['rps_off']:.0f}/{row['rps_key']:.0f}/"
                          f"{row['rps_budget']:.0f}, budget/key p50 "
                          f"{row['reserve_p50_ms_ratio']}", flush=True)  # fmt: skip
    finally:
        procs.close()
    return {"rows": rows}


async def _queries(cfg: Config, work: Path) -> dict[str, Any]:
    store = await open_store(f"sqlite+aiosqlite:///{work / 'metering-1m.db'}")
    now = datetime.now(UTC)
    meter = Meter(
        store,
        prices_for=lambda _: Prices(0.05, 0.10, 2.0, 0.10),
        caps_for_deployment=lambda _: Caps(),
        storage_dirs=dict,
        metrics=Metrics(),
        flush_interval_s=1.0,
        storage_interval_s=3600,
        raw_retention_days=30,
        clock=lambda: now,
    )
    rng = random.Random(7)
    span = timedelta(hours=24).total_seconds()
    t0 = time.perf_counter()
    for start in range(0, cfg.events, cfg.batch):
        # In time order, as a live system writes them: each flush touches few hourly rows.
        for i in range(start, min(cfg.events, start + cfg.batch)):
            at = now - timedelta(seconds=span * (1 - i / cfg.events))
            meter.record(RequestUsage(
                at=at, deployment=f"dep-{rng.randrange(cfg.deployments)}",
                key_id=f"key-{rng.randrange(cfg.keys)}", session_id=None,
                route="/v1/chat/completions", status=200 if rng.random() > 0.01 else 502,
                prompt_tokens=rng.randint(5, 500), completion_tokens=rng.randint(1, 300),
                estimated=False, ttft_ms=rng.uniform(5, 200), latency_ms=rng.uniform(50, 3000),
                queue_ms=rng.uniform(0, 10), cold_start=rng.random() < 0.01, stream=True,
            ))  # fmt: skip
        await meter.flush()
    load_s = time.perf_counter() - t0
    timings: dict[str, dict[str, float | None]] = {}
    scope = queries.Scope()
    cases: dict[str, Any] = {
        "summary 24h": lambda: queries.summary(store.engine, scope, timedelta(hours=24), now),
        "summary 1h": lambda: queries.summary(store.engine, scope, timedelta(hours=1), now),
        "by-deployment 24h": lambda: queries.by_deployment(
            store.engine, scope, timedelta(hours=24), now
        ),
        "timeseries 24h / 1h": lambda: queries.timeseries(
            store.engine, scope, timedelta(hours=24), timedelta(hours=1), now
        ),
        "summary 24h, one key": lambda: queries.summary(
            store.engine, queries.Scope(key_id="key-3"), timedelta(hours=24), now
        ),
        "deployment metrics 1h (percentiles from raw events)": lambda: queries.deployment_metrics(
            store.engine, scope, "dep-1", timedelta(hours=1), now
        ),
    }
    total = None
    for name, query in cases.items():
        times = []
        for _ in range(cfg.query_repeats):
            q0 = time.perf_counter()
            out = await query()
            times.append((time.perf_counter() - q0) * 1000)
            if name == "summary 24h":
                total = out["requests"]
        timings[name] = {"p50_ms": statistics.median(times), "max_ms": max(times)}
        print(f"  metering query {name}: {timings[name]['p50_ms']:.1f} ms", flush=True)
    await store.close()
    return {"events": cfg.events, "load_s": load_s, "summary_requests": total, "timings": timings}


def _spread(value: float, bounds: tuple[float, float]) -> str:
    return f"{value:.3f} ({bounds[0]:.3f}-{bounds[1]:.3f})"


def _report(result: Result, out_dir: Path, cfg: Config) -> None:
    rows = result.data["request_path"]["rows"]
    result.tables.append(
        Table(
            "Request path, metering on vs off (medians of alternating runs)",
            [
                "stream",
                "conc.",
                "req/s on",
                "req/s off",
                "ratio",
                "P50 ms on",
                "P50 ms off",
                "P50 ratio",
                "P99 ms on",
                "P99 ms off",
                "errors on/off",
                "req/s budget",
                "budget/on",
                "P50 budget/on",
            ],
            [
                [
                    r["stream"],
                    r["concurrency"],
                    r["rps_on"],
                    r["rps_off"],
                    r["rps_ratio"],
                    r["p50_ms_on"],
                    r["p50_ms_off"],
                    r["p50_ratio"],
                    r["p99_ms_on"],
                    r["p99_ms_off"],
                    f"{r['errors_on']:.0f}/{r['errors_off']:.0f}",
                    r["rps_budget"],
                    r["budget_rps_ratio"],
                    r["budget_p50_ratio"],
                ]
                for r in rows
            ],
        )
    )
    result.tables.append(
        Table(
            "Reservations alone: budgeted non-admin key vs non-admin key without a budget "
            "(medians of per-round ratios; min-max over rounds)",
            [
                "stream",
                "conc.",
                "req/s key",
                "req/s budget",
                "req/s budget/key",
                "P50 ms key (min-max)",
                "P50 ms budget (min-max)",
                "P50 budget/key",
                "P50 budget/key per round",
            ],
            [
                [
                    r["stream"],
                    r["concurrency"],
                    r["rps_key"],
                    r["rps_budget"],
                    r["reserve_rps_ratio"],
                    _spread(r["p50_ms_key"], r["p50_ms_key_range"]),
                    _spread(r["p50_ms_budget"], r["p50_ms_budget_range"]),
                    r["reserve_p50_ms_ratio"],
                    " ".join(f"{x:.2f}" for x in r["reserve_p50_ms_ratios"]),
                ]
                for r in rows
            ],
        )
    )
    q = result.data["queries"]
    result.tables.append(
        Table(
            f"Queries over {q['events']:,} events in SQLite (loaded in {q['load_s']:.0f} s)",
            ["query", "P50 ms", "max ms"],
            [[name, t["p50_ms"], t["max_ms"]] for name, t in q["timings"].items()],
        )
    )
    for r in rows:
        if r["rps_ratio"] is not None:
            ratio = r["rps_ratio"]
            result.targets.append(
                Target(
                    f"req/s with metering / without, concurrency {r['concurrency']}, "
                    f"{'streaming' if r['stream'] else 'non-streaming'}",
                    "near 1 (>= 0.95)",
                    f"{ratio:.3f}",
                    ratio >= 0.95,
                )
            )
        if r.get("reserve_p50_ms_ratio") is not None:
            ratio = r["reserve_p50_ms_ratio"]
            result.targets.append(
                Target(
                    f"P50 latency, budgeted key / same key type without a budget (paired "
                    f"per round), concurrency {r['concurrency']}, "
                    f"{'streaming' if r['stream'] else 'non-streaming'}",
                    "no more cost (<= 1.05)",
                    f"{ratio:.3f}",
                    ratio <= 1.05,
                )
            )
    summary_ms = q["timings"]["summary 24h"]["p50_ms"]
    result.targets.append(
        Target(
            f"24 h summary query over {q['events']:,} events",
            "fast (< 100 ms)",
            f"{summary_ms:.1f} ms",
            summary_ms < 100,
        )
    )
    if q["summary_requests"] != q["events"]:
        result.notes.append(
            f"CHECK FAILED: the 24 h summary counted {q['summary_requests']} of {q['events']} events"
        )
    result.notes += [
        "Two torpor processes (TORPOR_METERING_ENABLED true and false) front the same fake "
        f"engine ({cfg.tokens} tokens, no delay) through a fixed-port worker; each "
        f"configuration runs {cfg.repeats} times, {cfg.duration_s} s each after "
        f"{cfg.warmup_s} s of warm-up, the four modes in rotating order each round (off; on "
        "with the admin key; on with a non-admin key without a budget; on with a budgeted "
        "non-admin key). budget vs key isolates the reservation work.",
        "Events are written through the meter as a live system would (in time order, in "
        f"batches of {cfg.batch:,}), spread over the last 24 h, {cfg.deployments} deployments "
        f"and {cfg.keys} keys. Summaries read the hourly rollups plus at most the first "
        "partial hour of raw events; percentiles read the raw events of their window.",
    ]

    def draw(plt: Any) -> None:
        _fig, ax = plt.subplots(figsize=(7, 4))
        labels = [f"{'SSE' if r['stream'] else 'JSON'} c{r['concurrency']}" for r in rows]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r["rps_on"] for r in rows], 0.4, label="metering on")
        ax.bar([x + 0.2 for x in xs], [r["rps_off"] for r in rows], 0.4, label="metering off")
        ax.set_xticks(list(xs), labels)
        ax.set_ylabel("requests per second")
        ax.legend()
        ax.grid(True, axis="y", alpha=0.3)

    plot(result, out_dir, "metering.png", draw)
