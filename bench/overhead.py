"""1. Gateway overhead: the fake engine called directly, behind torpor and behind LiteLLM's
proxy; same engine process, same client, same run.

torpor reaches the very engine process the other two use: its deployment runs a
placeholder worker whose fixed port is that engine's (see harness.placeholder_spec).
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import litellm_proxy
from bench.harness import (
    ADMIN_KEY,
    Processes,
    machine_info,
    placeholder_spec,
    start_fake_engine,
    start_torpor,
)
from bench.load import (
    Call,
    RssSampler,
    closed_loop,
    errors_by_code,
    median,
    new_session,
    open_at_once,
    send,
    summary_ms,
)
from bench.report import Result, Table, Target, plot

MESSAGES = [{"role": "user", "content": "Say something."}]


@dataclass(frozen=True)
class Config:
    tokens: int = 16
    token_delay_ms: float = 0.25
    concurrencies: tuple[int, ...] = (1, 10, 100, 500)
    warmup_s: float = 1.0
    duration_s: float = 3.0
    repeats: int = 3
    sweep: tuple[int, ...] = (100, 250, 500, 1000, 2000)
    sweep_tokens: int = 20
    sweep_token_delay_ms: float = 150.0
    litellm: bool = True
    wrk: bool = True
    wrk_duration_s: float = 4.0
    sweep_pause_s: float = 1.0
    path_warmup_s: float = 0.5


SMOKE = Config(
    concurrencies=(1, 10),
    warmup_s=0.1,
    duration_s=0.5,
    repeats=1,
    sweep=(20,),
    sweep_tokens=5,
    sweep_token_delay_ms=50.0,
    sweep_pause_s=0.1,
    path_warmup_s=0.1,
    litellm=False,
    wrk=False,
)


@dataclass
class Gateway:
    name: str
    base: str
    headers: dict[str, str]
    rss: Callable[[], int]
    # Direct calls reach the sweep's slower engine at its own address.
    sweep_base: str | None = None
    sweep_rss: Callable[[], int] | None = None


def _stats(run_samples: list[Any]) -> dict[str, Any]:
    ok = [s for s in run_samples if s.ok]
    return {
        "latency_ms": summary_ms([s.latency for s in ok]),
        "ttft_ms": summary_ms([s.ttft for s in ok if s.ttft is not None]),
    }


async def _cell(
    session: aiohttp.ClientSession, gw: Gateway, stream: bool, c: int, cfg: Config
) -> dict[str, Any]:
    call = Call.chat(gw.base, "fast", MESSAGES, stream, gw.headers, timeout_s=120)
    async with RssSampler(gw.rss) as rss:
        run = await closed_loop(
            functools.partial(send, session, call), c, cfg.warmup_s, cfg.duration_s
        )
    return {
        "rps": round(run.rps, 1),
        "ok": run.ok,
        "wall_s": round(run.wall_s, 2),
        "latency_from_all_requests": run.all_samples,
        "errors": errors_by_code(run.samples),
        "rss_mib": rss.peak_mib,
        **_stats(run.samples),
    }


async def _wrk(gw: Gateway, stream: bool, c: int, seconds: float, work: Path) -> dict[str, Any]:
    """Requests per second with wrk (C, keep-alive) as the client instead of Python."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"error": "wrk is not installed"}
    body = Call.chat(gw.base, "fast", MESSAGES, stream).body.decode()
    lines = ['wrk.method = "POST"', f"wrk.body = '{body}'"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in {**gw.headers}.items()]
    lines.append('wrk.headers["Content-Type"] = "application/json"')
    script = work / f"wrk-{gw.name}-{int(stream)}.lua"
    script.write_text("\n".join(lines) + "\n")
    proc = await asyncio.create_subprocess_exec(
        wrk,
        "-t1",
        f"-c{c}",
        f"-d{seconds:g}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        gw.base + "/chat/completions",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    result: dict[str, Any] = {"raw_tail": text.strip().splitlines()[-4:]}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(line.split()[1])
        elif line.startswith("Non-2xx or 3xx responses:"):
            result["non_2xx"] = int(line.split()[-1])
        elif line.startswith("Socket errors:"):
            result["socket_errors"] = line.split(":", 1)[1].strip()
        elif line.startswith("Latency") and "rps" not in result:
            result["latency_avg"] = line.split()[1]
    return result


async def _sweep_step(session: aiohttp.ClientSession, gw: Gateway, n: int) -> dict[str, Any]:
    call = Call.chat(gw.sweep_base or gw.base, "slow", MESSAGES, True, gw.headers, timeout_s=120)
    t0 = time.perf_counter()
    async with RssSampler(gw.sweep_rss or gw.rss) as rss:
        samples = await open_at_once(functools.partial(send, session, call), n)
    ok = [s for s in samples if s.ok]
    ttfts = [s.ttft for s in samples if s.ttft is not None]
    return {
        "open_streams": n,
        "ok": len(ok),
        "errors": errors_by_code(samples),
        "ttft_ms": summary_ms(ttfts),
        "latency_ms": summary_ms([s.latency for s in ok]),
        "wall_s": round(time.perf_counter() - t0, 2),
        "rss_mib": rss.peak_mib,
    }


def _aggregate(runs: list[dict[str, Any]], names: list[str], cfg: Config) -> list[dict[str, Any]]:
    """Medians over repeats; added latency and ratios paired with the same repeat's direct."""
    cells = []
    for stream in (False, True):
        for c in cfg.concurrencies:
            sel = [r for r in runs if r["stream"] == stream and r["concurrency"] == c]
            for name in names:
                mine = [r for r in sel if r["target"] == name]
                if not mine:
                    continue
                added50: list[float] = []
                added99: list[float] = []
                addttft: list[float] = []
                ratio_direct: list[float] = []
                ratio_litellm: list[float] = []
                for r in mine:
                    base = next(
                        (b for b in sel if b["target"] == "direct" and b["rep"] == r["rep"]), None
                    )
                    if base is not None:
                        for key, acc in (("p50", added50), ("p99", added99)):
                            a, b = r["latency_ms"][key], base["latency_ms"][key]
                            if a is not None and b is not None:
                                acc.append(a - b)
                        a, b = r["ttft_ms"]["p50"], base["ttft_ms"]["p50"]
                        if a is not None and b is not None:
                            addttft.append(a - b)
                        if base["rps"]:
                            ratio_direct.append(r["rps"] / base["rps"])
                    lite = next(
                        (b for b in sel if b["target"] == "litellm" and b["rep"] == r["rep"]),
                        None,
                    )
                    if lite is not None and lite["rps"]:
                        ratio_litellm.append(r["rps"] / lite["rps"])
                errors: dict[str, int] = {}
                for r in mine:
                    for k, v in r["errors"].items():
                        errors[k] = errors.get(k, 0) + v
                cells.append(
                    {
                        "stream": stream,
                        "concurrency": c,
                        "target": name,
                        "repeats": len(mine),
                        "rps": median([r["rps"] for r in mine]),
                        "rps_min": min(r["rps"] for r in mine),
                        "rps_max": max(r["rps"] for r in mine),
                        "latency_p50_ms": median([r["latency_ms"]["p50"] for r in mine]),
                        "latency_p99_ms": median([r["latency_ms"]["p99"] for r in mine]),
                        "ttft_p50_ms": median([r["ttft_ms"]["p50"] for r in mine]),
                        "ttft_p99_ms": median([r["ttft_ms"]["p99"] for r in mine]),
                        "added_p50_ms": median(added50),
                        "added_p99_ms": median(added99),
                        "added_ttft_p50_ms": median(addttft),
                        "rps_vs_direct": median(ratio_direct),
                        "rps_vs_litellm": median(ratio_litellm),
                        "errors": errors,
                        "rss_mib": max(r["rss_mib"] for r in mine),
                    }
                )
    return cells


def _round(v: float | None, n: int = 3) -> float | None:
    return round(v, n) if v is not None else None


async def run(out_dir: Path, smoke: bool, work: Path) -> Result:
    cfg = SMOKE if smoke else Config()
    t_start = time.monotonic()
    result = Result(
        benchmark="overhead",
        title="Gateway overhead: direct engine vs torpor vs LiteLLM",
        smoke=smoke,
        machine=machine_info(),
        config={**cfg.__dict__, "litellm_version": litellm_proxy.LITELLM_VERSION},
        data={},
    )
    litellm_status = "skipped in smoke mode" if smoke else "not installed"
    if cfg.litellm:
        install = await asyncio.to_thread(
            litellm_proxy.ensure_installed, work / "litellm-install.log"
        )
        result.data["litellm_install"] = install.__dict__
        litellm_status = "ok" if install.ok else f"install failed: {install.detail}"
    result.data["litellm_status"] = litellm_status

    procs = Processes(work / "logs-overhead")
    try:
        engine, engine_url = start_fake_engine(
            procs, "engine-fast", tokens=cfg.tokens, token_delay_ms=cfg.token_delay_ms
        )
        slow, slow_url = start_fake_engine(
            procs,
            "engine-slow",
            tokens=cfg.sweep_tokens,
            token_delay_ms=cfg.sweep_token_delay_ms,
        )
        torpor = start_torpor(procs, work / "torpor-overhead")
        for name, url in (("fast", engine_url), ("slow", slow_url)):
            port = int(url.rsplit(":", 1)[1])
            torpor.deploy(placeholder_spec(name, port))
            torpor.wait_for(name, lambda d: d["ready_workers"] == 1, timeout_s=60)
        gateways = [
            Gateway(
                "direct",
                engine_url + "/v1",
                {},
                lambda: engine.rss_bytes(tree=False),
                sweep_base=slow_url + "/v1",
                sweep_rss=lambda: slow.rss_bytes(tree=False),
            ),
            Gateway(
                "torpor",
                torpor.url + "/v1",
                {"Authorization": f"Bearer {ADMIN_KEY}"},
                lambda: torpor.proc.rss_bytes(tree=False),
            ),
        ]
        if litellm_status == "ok":
            try:
                lite, lite_url = litellm_proxy.start(
                    procs,
                    {"fast": engine_url + "/v1", "slow": slow_url + "/v1"},
                    work / "litellm",
                )
                gateways.append(
                    Gateway("litellm", lite_url + "/v1", {}, lambda: lite.rss_bytes(tree=True))
                )
            except RuntimeError as exc:
                litellm_status = f"did not start: {str(exc)[:500]}"
                result.data["litellm_status"] = litellm_status
        names = [g.name for g in gateways]
        result.data["rss_note"] = (
            "RSS: direct = the engine process; torpor = the `torpor serve` process (its "
            "placeholder worker not counted); litellm = the proxy's process tree"
        )

        async with new_session() as session:
            for gw in gateways:  # warm every path (connections, imports, caches)
                for stream in (False, True):
                    call = Call.chat(gw.base, "fast", MESSAGES, stream, gw.headers)
                    await closed_loop(
                        functools.partial(send, session, call), 4, 0.0, cfg.path_warmup_s
                    )
            runs: list[dict[str, Any]] = []
            for stream in (False, True):
                for c in cfg.concurrencies:
                    for rep in range(cfg.repeats):
                        order = gateways[rep % len(gateways) :] + gateways[: rep % len(gateways)]
                        for gw in order:
                            cell = await _cell(session, gw, stream, c, cfg)
                            cell.update(target=gw.name, stream=stream, concurrency=c, rep=rep)
                            runs.append(cell)
                            print(
                                f"  overhead {gw.name:8s} stream={stream!s:5s} c={c:<4d} "
                                f"rep={rep} rps={cell['rps']:.0f} "
                                f"p50={cell['latency_ms']['p50']} ms errors={cell['errors']}",
                                flush=True,
                            )
            result.data["runs"] = runs
            cells = _aggregate(runs, names, cfg)
            result.data["cells"] = cells

            if cfg.wrk:
                wrk_rows = []
                for stream in (False, True):
                    for gw in gateways:
                        w = await _wrk(gw, stream, 10, cfg.wrk_duration_s, work)
                        w.update(target=gw.name, stream=stream, concurrency=10)
                        wrk_rows.append(w)
                result.data["wrk"] = wrk_rows

            sweep: list[dict[str, Any]] = []
            for gw in gateways:
                for n in cfg.sweep:
                    step = await _sweep_step(session, gw, n)
                    step["target"] = gw.name
                    sweep.append(step)
                    print(
                        f"  sweep {gw.name:8s} n={n:<5d} ok={step['ok']} "
                        f"errors={step['errors']} wall={step['wall_s']}s",
                        flush=True,
                    )
                    await asyncio.sleep(cfg.sweep_pause_s)
            result.data["sweep"] = sweep
    finally:
        procs.close()

    _tables(result, cells, cfg)
    _targets(result, cells, litellm_status)
    _plots(result, out_dir, cells, names, cfg)
    result.notes += [
        f"Engine: fake OpenAI engine, {cfg.tokens} tokens, {cfg.token_delay_ms} ms per token "
        "(streamed one SSE chunk per token; non-streaming sleeps tokens x delay once).",
        "Client: one aiohttp session (Python, uvloop) in the bench process, on the same 2-CPU "
        "box as the engine and the gateway: at high concurrency the client, the engine and "
        "the gateway compete for the CPUs, so absolute RPS is a property of the whole box.",
        "Added latency = gateway P50 (P99) minus the direct P50 (P99) of the same repeat; "
        "medians over repeats. RPS = successful requests / wall time of the run.",
        f"LiteLLM {litellm_proxy.LITELLM_VERSION}: {litellm_status}.",
        "Sweep: N streaming requests opened at once against a slower engine "
        f"({cfg.sweep_tokens} tokens x {cfg.sweep_token_delay_ms} ms); a gateway 'breaks' "
        "at the first N where not every stream completes.",
        str(result.data.get("rss_note", "")),
    ]
    result.wall_s = time.monotonic() - t_start
    return result


def _tables(result: Result, cells: list[dict[str, Any]], cfg: Config) -> None:
    headers = [
        "conc.",
        "gateway",
        "req/s",
        "x direct",
        "x LiteLLM",
        "P50 ms",
        "P99 ms",
        "added P50",
        "added P99",
        "TTFT P50",
        "TTFT P99",
        "errors",
        "RSS MiB",
    ]
    for stream in (False, True):
        rows = [
            [
                c["concurrency"],
                c["target"],
                c["rps"],
                _round(c["rps_vs_direct"], 2),
                _round(c["rps_vs_litellm"], 1),
                c["latency_p50_ms"],
                c["latency_p99_ms"],
                _round(c["added_p50_ms"]) if c["target"] != "direct" else None,
                _round(c["added_p99_ms"]) if c["target"] != "direct" else None,
                c["ttft_p50_ms"] if stream else None,
                c["ttft_p99_ms"] if stream else None,
                sum(c["errors"].values()),
                c["rss_mib"],
            ]
            for c in cells
            if c["stream"] is stream
        ]
        title = "Streaming (SSE)" if stream else "Non-streaming"
        result.tables.append(Table(f"{title}, medians over {cfg.repeats} repeats", headers, rows))
    wrk = result.data.get("wrk")
    if wrk:
        rows = [
            [
                "yes" if w["stream"] else "no",
                w["target"],
                w.get("rps"),
                w.get("non_2xx", 0),
                w.get("socket_errors", ""),
            ]
            for w in wrk
        ]
        result.tables.append(
            Table(
                f"wrk (C client), concurrency 10, {cfg.wrk_duration_s:g} s",
                ["stream", "gateway", "req/s", "non-2xx", "socket errors"],
                rows,
            )
        )
    sweep = result.data.get("sweep", [])
    rows = [
        [
            s["target"],
            s["open_streams"],
            s["ok"],
            ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "none",
            s["ttft_ms"]["p50"],
            s["ttft_ms"]["p99"],
            s["latency_ms"]["p99"],
            s["wall_s"],
            s["rss_mib"],
        ]
        for s in sweep
    ]
    result.tables.append(
        Table(
            "Open-stream sweep",
            [
                *("gateway", "streams", "completed", "errors", "TTFT P50", "TTFT P99"),
                *("P99 ms", "wall s", "RSS MiB"),
            ],
            rows,
        )
    )
    breaks = {}
    for s in sweep:
        if s["ok"] < s["open_streams"] and s["target"] not in breaks:
            breaks[s["target"]] = s["open_streams"]
    result.data["sweep_breaks_at"] = breaks


def _find(cells: list[dict[str, Any]], target: str, stream: bool, c: int) -> dict[str, Any] | None:
    return next(
        (
            x
            for x in cells
            if x["target"] == target and x["stream"] is stream and x["concurrency"] == c
        ),
        None,
    )


def _targets(result: Result, cells: list[dict[str, Any]], litellm_status: str) -> None:
    for stream in (False, True):
        kind = "streaming" if stream else "non-streaming"
        t1 = _find(cells, "torpor", stream, 1)
        added = t1["added_p50_ms"] if t1 else None
        result.targets.append(
            Target(
                f"added latency P50, concurrency 1, {kind}",
                "< 1 ms",
                f"{added:.3f} ms" if added is not None else "-",
                added < 1.0 if added is not None else None,
            )
        )
        t10 = _find(cells, "torpor", stream, 10)
        lite = t10["rps_vs_litellm"] if t10 else None
        result.targets.append(
            Target(
                f"req/s vs LiteLLM, concurrency 10, {kind}",
                ">= 20x",
                f"{lite:.1f}x" if lite is not None else "-",
                lite >= 20 if lite is not None else None,
                "" if lite is not None else f"LiteLLM {litellm_status}",
            )
        )
        direct = t10["rps_vs_direct"] if t10 else None
        result.targets.append(
            Target(
                f"req/s vs direct engine, concurrency 10, {kind}",
                ">= 30%",
                f"{direct * 100:.0f}%" if direct is not None else "-",
                direct >= 0.30 if direct is not None else None,
            )
        )


def _plots(
    result: Result, out_dir: Path, cells: list[dict[str, Any]], names: list[str], cfg: Config
) -> None:
    def draw(metric: str, ylabel: str, log: bool) -> Callable[[Any], None]:
        def inner(plt: Any) -> None:
            _fig, axes = plt.subplots(1, 2, figsize=(10, 4))
            for ax, stream in zip(axes, (False, True), strict=True):
                for name in names:
                    pts = [
                        (c["concurrency"], c[metric])
                        for c in cells
                        if c["target"] == name and c["stream"] is stream and c[metric] is not None
                    ]
                    if pts:
                        xs, ys = zip(*pts, strict=True)
                        ax.plot(xs, ys, marker="o", label=name)
                ax.set_xscale("log")
                if log:
                    ax.set_yscale("log")
                ax.set_xlabel("concurrency")
                ax.set_ylabel(ylabel)
                ax.set_title("streaming" if stream else "non-streaming")
                ax.grid(True, alpha=0.3)
                ax.legend()

        return inner

    plot(result, out_dir, "overhead_rps.png", draw("rps", "requests per second", True))
    plot(result, out_dir, "overhead_latency.png", draw("latency_p50_ms", "P50 latency (ms)", True))

    sweep = result.data.get("sweep", [])

    def draw_sweep(plt: Any) -> None:
        _fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for name in names:
            pts = [s for s in sweep if s["target"] == name]
            if not pts:
                continue
            xs = [s["open_streams"] for s in pts]
            axes[0].plot(xs, [s["ok"] / s["open_streams"] * 100 for s in pts], "o-", label=name)
            axes[1].plot(xs, [s["ttft_ms"]["p99"] or 0 for s in pts], "o-", label=name)
        axes[0].set_ylabel("streams completed (%)")
        axes[1].set_ylabel("TTFT P99 (ms)")
        axes[1].set_yscale("log")
        for ax in axes:
            ax.set_xlabel("streams opened at once")
            ax.grid(True, alpha=0.3)
            ax.legend()

    plot(result, out_dir, "overhead_sweep.png", draw_sweep)
