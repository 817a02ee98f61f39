"""`python -m bench all|overhead|coldstart|burst|controlplane|affinity|metering|profile [--smoke]
[--out bench/results]`: run benchmarks on this machine and write their results."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench.harness import REPO, machine_info, raise_fd_limit
from bench.report import Result, Target, write, write_summary

BENCHMARKS = (
    "overhead", "coldstart", "burst", "controlplane", "affinity", "metering", "profile",
    "ladder",
)  # fmt: skip
# The profiler run needs py-spy and takes a while, the ladder's replay waits on 20 s boots:
# part of `all` in full runs only.
SMOKE_SKIPS = ("profile", "ladder")

Runner = Callable[[Path, bool, Path], Coroutine[Any, Any, Result]]


def _runner(name: str) -> Runner:
    module = importlib.import_module(f"bench.{name}")
    run: Runner = module.run
    return run


def _failed(name: str, smoke: bool, exc: BaseException, wall_s: float) -> Result:
    """A benchmark that crashed still leaves a result saying so."""
    return Result(
        benchmark=name,
        title=f"{name}: FAILED",
        smoke=smoke,
        machine=machine_info(),
        config={},
        data={"error": repr(exc), "traceback": traceback.format_exc()},
        targets=[Target(name, "benchmark runs", f"failed: {exc!r}"[:300], False)],
        notes=[f"The benchmark raised {exc!r}; see `data.traceback` in the JSON."],
        wall_s=wall_s,
    )


def _use_uvloop() -> None:
    """The client loop on uvloop when it is installed (uvicorn's standard extra has it)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _terminate(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("benchmark", choices=("all", *BENCHMARKS))
    parser.add_argument("--smoke", action="store_true", help="seconds and small counts (CI)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--keep-work", action="store_true", help="keep logs and data dirs")
    args = parser.parse_args(argv)

    names = list(BENCHMARKS) if args.benchmark == "all" else [args.benchmark]
    if args.benchmark == "all" and args.smoke:
        names = [n for n in names if n not in SMOKE_SKIPS]
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    raise_fd_limit()
    _use_uvloop()
    # SIGTERM unwinds like Ctrl-C, so every benchmark's `finally` stops its processes.
    signal.signal(signal.SIGTERM, _terminate)
    work = Path(tempfile.mkdtemp(prefix="torpor-bench-"))
    failures = 0
    try:
        for name in names:
            print(f"bench: {name}{' (smoke)' if args.smoke else ''}", flush=True)
            t0 = time.monotonic()
            try:
                result = asyncio.run(_runner(name)(out, args.smoke, work / name))
            except Exception as exc:
                traceback.print_exc()
                result = _failed(name, args.smoke, exc, time.monotonic() - t0)
                failures += 1
            write(result, out)
            missed = [t.name for t in result.targets if t.met is False]
            print(
                f"bench: {name} done in {result.wall_s:.0f} s"
                + (f"; targets missed: {', '.join(missed)}" if missed else ""),
                flush=True,
            )
        summary = write_summary(out)
        print(f"bench: results in {out} (summary {summary.name})", flush=True)
    finally:
        if args.keep_work:
            print(f"bench: work files kept in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
