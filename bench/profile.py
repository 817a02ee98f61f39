"""Where torpor's gateway spends its CPU under load: `torpor serve` run under py-spy while
the load client drives non-streaming and streaming requests through it to the fake engine.
Reports the hottest functions (own time and inclusive time)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import shutil
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from bench.harness import (
    ADMIN_KEY,
    PYTHON,
    Processes,
    Torpor,
    free_port,
    machine_info,
    placeholder_spec,
    start_fake_engine,
    wait_http,
)
from bench.load import Call, closed_loop, new_session, send
from bench.report import Result, Table

MESSAGES = [{"role": "user", "content": "Say something."}]
_LINE = re.compile(r":\d+\)$")


def _frame(f: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`; line numbers merged."""
    f = _LINE.sub(")", f.strip())
    name, _, where = f.partition(" (")
    if where:
        where = where.rstrip(")")
        parts = where.split("/")
        pkg = next(
            (
                p
                for p in (
                    "torpor",
                    "aiosqlite",
                    "aiohttp",
                    "uvicorn",
                    "starlette",
                    "asyncio",
                    "fastapi",
                    "sqlalchemy",
                    "uvloop",
                    "orjson",
                )
                if p in parts
            ),
            "",
        )
        short = "/".join(parts[parts.index(pkg) :]) if pkg else parts[-1]
        return f"{name} ({short})"
    return name


def analyse(raw: str, top: int = 20) -> dict[str, Any]:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        leaf = frames[-1]
        where = leaf.partition(" (")[2].split("/")[0].rstrip(")")
        modules[where or "native"] += n

    def pct(c: Counter[str]) -> list[list[Any]]:
        return [[k, round(v * 100 / total, 1)] for k, v in c.most_common(top)] if total else []

    return {
        "samples": total,
        "own": pct(own),
        "inclusive": pct(incl),
        "own_by_package": pct(modules),
    }


async def run(out_dir: Path, smoke: bool, work: Path) -> Result:
    t_start = time.monotonic()
    seconds = 2.0 if smoke else 8.0
    result = Result(
        benchmark="profile",
        title="Profile of torpor serve under load (py-spy)",
        smoke=smoke,
        machine=machine_info(),
        config={"seconds_per_mode": seconds, "concurrency": 10, "rate_hz": 250},
        data={},
    )
    pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(PYTHON).parent))
    if pyspy is None:
        result.notes.append("py-spy is not installed (pip install 'torpor[bench]'): no profile")
        result.wall_s = time.monotonic() - t_start
        return result
    procs = Processes(work / "logs-profile")
    raw_path = work / "pyspy.txt"
    try:
        _engine, engine_url = start_fake_engine(procs, "engine", tokens=16, token_delay_ms=0.25)
        data_dir = work / "torpor-profile"
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        spy = procs.start(
            "py-spy",
            [
                *(pyspy, "record", "-r", "250", "--format", "raw", "-o", str(raw_path), "--"),
                *(PYTHON, "-m", "torpor", "serve", "--port", str(port)),
            ],
            env={
                "TORPOR_ADMIN_KEY": ADMIN_KEY,
                "TORPOR_DATA_DIR": str(data_dir),
                "TORPOR_CREATE_DEFAULT_DEPLOYMENT": "false",
                "TORPOR_LOG_LEVEL": "warning",
            },
            cwd=data_dir,
        )
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", spy, timeout_s=60)
        torpor = Torpor(spy, url, data_dir)
        torpor.deploy(placeholder_spec("fast", int(engine_url.rsplit(":", 1)[1])))
        torpor.wait_for("fast", lambda d: d["ready_workers"] == 1, timeout_s=60)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with new_session() as session:
            for stream in (False, True):
                call = Call.chat(url + "/v1", "fast", MESSAGES, stream, headers)
                r = await closed_loop(functools.partial(send, session, call), 10, 0.0, seconds)
                result.data[f"rps_{'stream' if stream else 'nonstream'}"] = round(r.rps, 1)
        # Stop torpor (py-spy's child): py-spy then writes the profile and exits.
        for child in psutil.Process(spy.pid).children():
            with contextlib.suppress(psutil.Error):
                child.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(spy.popen.wait, 30)
    finally:
        procs.close()
    if not raw_path.exists():
        result.notes.append(f"py-spy wrote no profile; its log: {spy.log_tail(10)}")
        result.wall_s = time.monotonic() - t_start
        return result
    analysis = analyse(raw_path.read_text(errors="replace"))
    result.data.update(analysis)
    lines = raw_path.read_text(errors="replace").splitlines()
    lines.sort(key=lambda ln: -int(ln.rpartition(" ")[2]) if ln.rpartition(" ")[2].isdigit() else 0)
    (out_dir / "profile_pyspy_collapsed.txt").write_text("\n".join(lines[:150]) + "\n")
    result.tables += [
        Table("Own time (leaf frames), % of samples", ["function", "%"], analysis["own"]),
        Table("Inclusive time, % of samples", ["function", "%"], analysis["inclusive"]),
        Table("Own time by package", ["package", "%"], analysis["own_by_package"]),
    ]
    result.notes += [
        f"torpor serve ran under `py-spy record -r 250` (idle time excluded) while the bench "
        f"sent {seconds:g} s of non-streaming then {seconds:g} s of streaming requests at "
        "concurrency 10 to the fake engine through it.",
        "The 150 most frequent collapsed stacks: profile_pyspy_collapsed.txt (load into speedscope or flamegraph.pl).",
    ]
    result.wall_s = time.monotonic() - t_start
    return result
