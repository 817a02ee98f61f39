"""5. Session affinity: multi-turn chats against 2 llama.cpp workers, with `X-Session-Id`
(affinity) and without; TTFT per turn, and the ratio without/with.

Two chats start together (one per worker), then take turns one request at a time. llama.cpp
reuses the KV cache of the prompt prefix it evaluated last, so a turn that lands on a
worker that served the other chat in between evaluates the whole history again.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import (
    ADMIN_KEY,
    Processes,
    Torpor,
    fake_spec,
    llama_available,
    llama_spec,
    machine_info,
    start_torpor,
)
from bench.load import Call, median, new_session, send
from bench.report import Result, Table, plot

SYSTEM = (
    "You are a patient assistant for a small bakery. Answer in one short sentence. "
    "The bakery sells sourdough, rye, baguettes, croissants, cinnamon rolls and seasonal "
    "fruit tarts. It opens at seven in the morning and closes at six in the evening, every "
    "day except Monday. Orders for cakes need two days of notice. Deliveries are free "
    "within five kilometres. Gluten-free bread is baked on Thursdays only. "
)
QUESTIONS = [
    "What time do you open?",
    "Do you sell rye bread?",
    "Can I order a cake for tomorrow?",
    "When is gluten-free bread baked?",
    "Do you deliver to my street two kilometres away?",
    "Are you open on Monday?",
    "What pastries do you have?",
    "Thank you, goodbye!",
]


@dataclass(frozen=True)
class Config:
    turns: int = 6
    chats: int = 2
    repeats: int = 3
    max_tokens: int = 24
    engine: str = "llama"


SMOKE = Config(turns=2, chats=2, repeats=1, engine="fake")


class _Chat:
    def __init__(self, affinity: bool):
        nonce = secrets.token_hex(4)  # a fresh prefix: no cache from an earlier chat helps
        self.messages: list[dict[str, str]] = [
            {"role": "system", "content": f"Conversation {nonce}. {SYSTEM * 3}"}
        ]
        self.headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        if affinity:
            self.headers["X-Session-Id"] = f"chat-{nonce}"
        self.turns: list[dict[str, Any]] = []

    async def turn(self, session: aiohttp.ClientSession, torpor: Torpor, cfg: Config) -> None:
        t = len(self.turns)
        self.messages.append({"role": "user", "content": QUESTIONS[t % len(QUESTIONS)]})
        call = Call.chat(
            torpor.url + "/v1",
            "aff",
            self.messages,
            True,
            self.headers,
            timeout_s=300,
            max_tokens=cfg.max_tokens,
            temperature=0,
        )
        s = await send(session, call)
        if not s.ok or s.ttft is None:
            raise RuntimeError(f"turn {t + 1} failed: {s}")
        self.turns.append({"turn": t + 1, "ttft_ms": s.ttft * 1000, "worker": s.worker})
        # The assistant's turn goes into the history as the next prompt's prefix.
        self.messages.append({"role": "assistant", "content": f"Answer {t + 1} noted."})


async def _chats(
    session: aiohttp.ClientSession, torpor: Torpor, cfg: Config, affinity: bool
) -> list[list[dict[str, Any]]]:
    """First turns together (so the chats start on different workers), then the chats take
    turns one request at a time, as users who type at different moments."""
    chats = [_Chat(affinity) for _ in range(cfg.chats)]
    await asyncio.gather(*(c.turn(session, torpor, cfg) for c in chats))
    for _ in range(cfg.turns - 1):
        for c in chats:
            await c.turn(session, torpor, cfg)
    return [c.turns for c in chats]


async def run(out_dir: Path, smoke: bool, work: Path) -> Result:
    cfg = SMOKE if smoke else Config()
    engine = cfg.engine
    why = llama_available()
    t_start = time.monotonic()
    result = Result(
        benchmark="affinity",
        title="Session affinity: TTFT per turn with and without X-Session-Id",
        smoke=smoke,
        machine=machine_info(),
        config=dict(cfg.__dict__),
        data={},
    )
    if engine == "llama" and why is not None:
        engine = "fake"
        result.notes.append(f"llama.cpp not available ({why}): ran on the fake engine")
    procs = Processes(work / "logs-affinity")
    runs: dict[str, list[list[dict[str, Any]]]] = {"affinity": [], "none": []}
    try:
        torpor = start_torpor(procs, work / "torpor-affinity")
        if engine == "llama":
            spec = llama_spec("aff", min_workers=2, max_workers=2, idle_timeout_s=3600)
        else:
            spec = fake_spec("aff", ["--tokens", "8"], min_workers=2, max_workers=2)
        torpor.deploy(spec)
        torpor.wait_for("aff", lambda d: d["ready_workers"] == 2, timeout_s=180)
        async with new_session() as session:
            for rep in range(cfg.repeats):
                modes = [True, False] if rep % 2 == 0 else [False, True]
                for affinity in modes:
                    chats = await _chats(session, torpor, cfg, affinity)
                    runs["affinity" if affinity else "none"].extend(chats)
                    firsts = [round(c[-1]["ttft_ms"]) for c in chats]
                    print(f"  affinity rep={rep} affinity={affinity} last-turn TTFT={firsts}")
    finally:
        procs.close()
    result.data = {"engine": engine, "chats": runs}
    _report(result, out_dir, cfg, engine)
    result.wall_s = time.monotonic() - t_start
    return result


def _switches(chats: list[list[dict[str, Any]]]) -> tuple[int, int]:
    moved = total = 0
    for chat in chats:
        for a, b in itertools.pairwise(chat):
            total += 1
            moved += a["worker"] != b["worker"]
    return moved, total


def _report(result: Result, out_dir: Path, cfg: Config, engine: str) -> None:
    runs = result.data["chats"]
    rows = []
    per_turn: dict[str, list[float | None]] = {"affinity": [], "none": []}
    for t in range(cfg.turns):
        med = {}
        for mode in ("affinity", "none"):
            vals = [chat[t]["ttft_ms"] for chat in runs[mode] if len(chat) > t]
            med[mode] = median(vals)
            per_turn[mode].append(med[mode])
        a, n = med["affinity"], med["none"]
        ratio = n / a if a and n else None
        rows.append([t + 1, a, n, round(ratio, 2) if ratio else None])
    later = [r[3] for r in rows[1:] if r[3] is not None]
    result.data["ratio_turns_2_plus_median"] = median(later)
    moved_a, total_a = _switches(runs["affinity"])
    moved_n, total_n = _switches(runs["none"])
    result.data["worker_switches"] = {
        "affinity": [moved_a, total_a],
        "none": [moved_n, total_n],
    }
    result.tables.append(
        Table(
            f"TTFT per turn (median over {len(runs['affinity'])} chats each, ms)",
            ["turn", "with affinity", "without", "without / with"],
            rows,
        )
    )
    result.tables.append(
        Table(
            "Turns that moved to the other worker",
            ["mode", "moved", "of"],
            [["with affinity", moved_a, total_a], ["without", moved_n, total_n]],
        )
    )
    result.notes += [
        f"Engine: {engine}; deployment with 2 workers (min_workers = max_workers = 2, "
        "concurrency 4). The chats' first turns are sent together (so the chats start on "
        "different workers), then the chats take turns one request at a time. Without a "
        "session id the least-loaded router sends each of those lone requests to the first "
        "worker (ties go to the earliest), so the chats evict each other's KV cache there.",
        f"Each chat: a ~{len((SYSTEM * 3).split())}-word system prompt with a random nonce, "
        f"{cfg.turns} user turns, max_tokens {cfg.max_tokens}, temperature 0. The ratio "
        "over turns 2+ (median): "
        f"{result.data['ratio_turns_2_plus_median']}.",
    ]

    def draw(plt: Any) -> None:
        _fig, ax = plt.subplots(figsize=(7, 4))
        xs = list(range(1, cfg.turns + 1))
        ax.plot(xs, per_turn["affinity"], "o-", label="with affinity (X-Session-Id)")
        ax.plot(xs, per_turn["none"], "o-", label="without")
        ax.set_xlabel("turn")
        ax.set_ylabel("TTFT median (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend()

    plot(result, out_dir, "affinity.png", draw)
