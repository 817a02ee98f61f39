"""4. Control-plane scale: many deployments and workers on the fake runtime (starts
nothing): one controller cycle's time, the controller's memory, and the latency of the
fleet view over HTTP (`/api/fleet` when it answers, else `GET /api/deployments`)."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.harness import (
    ADMIN_KEY,
    PYTHON,
    REPO,
    Processes,
    free_port,
    machine_info,
    wait_http,
)
from bench.load import percentile, summary_ms
from bench.report import Result, Table, Target, plot


@dataclass(frozen=True)
class Config:
    deployments: int = 1000
    workers_per_deployment: int = 5
    steady_ticks: int = 20
    api_requests: int = 20


SMOKE = Config(deployments=20, workers_per_deployment=5, steady_ticks=3, api_requests=3)


def _spec(i: int, workers: int) -> dict[str, Any]:
    return {
        "name": f"dep-{i:05d}",
        "framework": "custom",
        "options": {"command": "fake-engine --port {port}", "health_path": "/health"},
        "min_workers": workers,
        "max_workers": workers,
        "idle_timeout_s": 86_400,
    }


def _rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


async def _in_process(cfg: Config, data_dir: Path) -> dict[str, Any]:
    """Controller, store (SQLite in a temp dir), admission, fake runtime, wired like
    Services.start; cycles timed with `await controller.tick()`."""
    from torpor.admission import Admission
    from torpor.controller import Controller
    from torpor.gpus import GpuPool
    from torpor.runtime.fake import FakeRuntime
    from torpor.settings import Settings
    from torpor.spec import DeploymentSpec
    from torpor.states import SetupState, WorkerState
    from torpor.store import open_store

    settings = Settings(data_dir=data_dir, admin_key=ADMIN_KEY, create_default_deployment=False)
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    gc.collect()
    rss0 = _rss_mib()
    store = await open_store(settings.resolved_database_url)
    runtime = FakeRuntime()
    admission = Admission(time.monotonic, lambda _name: None)
    controller = Controller(settings, store, runtime, admission, GpuPool([]), time.monotonic)
    out: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        for i in range(cfg.deployments):
            await controller.create(
                DeploymentSpec.model_validate(_spec(i, cfg.workers_per_deployment))
            )
        deadline = time.monotonic() + 600
        while any(d.state is not SetupState.RUNNING for d in controller.deployments.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("deployments did not reach running")
            await asyncio.sleep(0.05)
            await controller.tick()  # applies the setup jobs' results
        out["create_all_s"] = round(time.perf_counter() - t0, 3)

        # Scale-up: the first cycle starts every worker, the next one finds them ready.
        ticks: list[dict[str, Any]] = []
        for label in ("start workers", "workers ready"):
            t = time.perf_counter()
            await controller.tick()
            ticks.append({"cycle": label, "ms": round((time.perf_counter() - t) * 1000, 2)})
        # Let the background event writes of those cycles finish before the steady state.
        pending = list(controller._stopping)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        healthy = sum(
            1
            for d in controller.deployments.values()
            for w in d.workers.values()
            if w.state is WorkerState.HEALTHY
        )
        out["healthy_workers"] = healthy
        out["runtime_starts"] = runtime.starts
        steady = []
        for _ in range(cfg.steady_ticks):
            t = time.perf_counter()
            await controller.tick()
            steady.append(time.perf_counter() - t)
        out["scale_up_cycles"] = ticks
        out["steady_cycle_ms"] = summary_ms(steady)
        gc.collect()
        out["rss_mib_before"] = round(rss0, 1)
        out["rss_mib_after"] = round(_rss_mib(), 1)
        out["rss_mib_delta"] = round(_rss_mib() - rss0, 1)
        # Profile one steady cycle for the bottleneck, when the cycle misses its target.
        out["steady_cycle_profile"] = await _profile_tick(controller)
    finally:
        t = time.perf_counter()
        await controller.shutdown()
        out["shutdown_s"] = round(time.perf_counter() - t, 3)
        await store.close()
    return out


async def _profile_tick(controller: Any) -> list[str]:
    try:
        from pyinstrument import Profiler
    except ImportError:
        return ["pyinstrument is not installed"]
    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    for _ in range(5):
        await controller.tick()
    profiler.stop()
    text = str(profiler.output_text(unicode=False, color=False, show_all=False))
    return text.replace(str(REPO) + "/", "").splitlines()[:60]


async def _fleet_latency(cfg: Config, data_dir: Path, procs: Processes) -> dict[str, Any]:
    """The same data dir served by `torpor serve` on the fake runtime (bench.fleet_server):
    it reloads the deployments and starts their workers, then the fleet view is timed."""
    port = free_port()
    proc = procs.start(
        "fleet-server",
        [PYTHON, "-m", "bench.fleet_server", "--data-dir", str(data_dir), "--port", str(port)],
        env={"TORPOR_ADMIN_KEY": ADMIN_KEY, "TORPOR_LOG_LEVEL": "warning"},
    )
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    await asyncio.to_thread(wait_http, url + "/healthz", proc, 600, 0.1)
    out: dict[str, Any] = {"serve_ready_s": round(time.perf_counter() - t0, 2)}
    want = cfg.deployments * cfg.workers_per_deployment
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        deadline = time.monotonic() + 600
        while True:
            r = await client.get("/api/deployments")
            ready = sum(d["ready_workers"] for d in r.json()["data"])
            if ready >= want:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {ready}/{want} fake workers ready")
            await asyncio.sleep(0.5)
        out["all_ready_s"] = round(time.perf_counter() - t0, 2)
        fleet = await client.get("/api/fleet")
        route = "/api/fleet" if fleet.status_code == 200 else "/api/deployments"
        out["route"] = route
        out["fleet_status"] = fleet.status_code
        times, sizes = [], []
        for _ in range(cfg.api_requests):
            t = time.perf_counter()
            r = await client.get(route)
            r.raise_for_status()
            times.append(time.perf_counter() - t)
            sizes.append(len(r.content))
        out["latency_ms"] = summary_ms(times)
        out["response_bytes"] = int(percentile([float(s) for s in sizes], 50) or 0)
        out["serve_rss_mib"] = round(psutil.Process(proc.pid).memory_info().rss / 2**20, 1)
    return out


async def run(out_dir: Path, smoke: bool, work: Path) -> Result:
    cfg = SMOKE if smoke else Config()
    t_start = time.monotonic()
    n_workers = cfg.deployments * cfg.workers_per_deployment
    result = Result(
        benchmark="controlplane",
        title=f"Control-plane scale: {cfg.deployments} deployments, {n_workers} workers "
        "(fake runtime)",
        smoke=smoke,
        machine=machine_info(),
        config=dict(cfg.__dict__),
        data={},
    )
    data_dir = work / "data"
    result.data["in_process"] = await _in_process(cfg, data_dir)
    print(f"  controlplane in-process: {result.data['in_process']['steady_cycle_ms']}", flush=True)
    procs = Processes(work / "logs-controlplane")
    try:
        result.data["http"] = await _fleet_latency(cfg, data_dir, procs)
    finally:
        procs.close()
    _report(result, out_dir, cfg)
    result.wall_s = time.monotonic() - t_start
    return result


def _report(result: Result, out_dir: Path, cfg: Config) -> None:
    ip, http = result.data["in_process"], result.data["http"]
    steady = ip["steady_cycle_ms"]
    rows: list[list[Any]] = [
        ["create deployments (API path, setup pipeline)", f"{ip['create_all_s']} s"],
        *[[f"cycle: {t['cycle']}", f"{t['ms']} ms"] for t in ip["scale_up_cycles"]],
        ["steady cycle P50", f"{steady['p50']} ms"],
        ["steady cycle P99", f"{steady['p99']} ms"],
        ["controller + store memory (RSS delta)", f"{ip['rss_mib_delta']} MiB"],
        ["healthy workers", ip["healthy_workers"]],
        ["shutdown (stop every worker)", f"{ip['shutdown_s']} s"],
        ["torpor serve: restart to all workers ready", f"{http['all_ready_s']} s"],
        [f"GET {http['route']} P50", f"{http['latency_ms']['p50']} ms"],
        [f"GET {http['route']} P99", f"{http['latency_ms']['p99']} ms"],
        [f"GET {http['route']} response size", f"{http['response_bytes']:,} bytes"],
        ["torpor serve RSS", f"{http['serve_rss_mib']} MiB"],
    ]
    result.tables.append(Table("Results", ["measure", "value"], rows))
    p50 = steady["p50"]
    result.targets.append(
        Target(
            f"controller cycle at {cfg.deployments} deployments (steady, P50)",
            "< 100 ms",
            f"{p50:.1f} ms" if p50 is not None else "-",
            p50 < 100 if p50 is not None else None,
        )
    )
    if http["route"] != "/api/fleet":
        result.notes.append(
            f"`/api/fleet` answered {http['fleet_status']} (not built yet): the fleet latency "
            "is that of `GET /api/deployments` (every deployment with its workers)."
        )
    result.notes += [
        "Cycle = `await Controller.tick()` in-process, with the fake runtime (src/torpor/"
        "runtime/fake.py) and a SQLite store in a temp dir, wired as Services.start does.",
        "'start workers' is the cycle that starts every worker from zero, 'workers ready' the "
        "one that probes them and publishes routes; 'steady' cycles change nothing.",
        "The profile of 5 steady cycles (pyinstrument) is in the JSON: data.in_process."
        "steady_cycle_profile.",
    ]

    def draw(plt: Any) -> None:
        _fig, ax = plt.subplots(figsize=(7, 4))
        labels = [t["cycle"] for t in ip["scale_up_cycles"]] + ["steady P50", "steady P99"]
        values = [t["ms"] for t in ip["scale_up_cycles"]] + [steady["p50"], steady["p99"]]
        ax.bar(labels, values)
        ax.axhline(100, color="red", linestyle="--", label="target 100 ms")
        ax.set_yscale("log")
        ax.set_ylabel("ms per controller cycle")
        ax.legend()

    plot(result, out_dir, "controlplane.png", draw)


if __name__ == "__main__":
    sys.exit("run through python -m bench controlplane")
