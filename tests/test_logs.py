"""Worker logs: tail, tail of every worker, and follow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from torpor.logs import LogSource, follow, tail_all, tail_lines


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    write_lines(log, [f"line {i}" for i in range(10)])
    assert tail_lines(log, 3) == ["line 7", "line 8", "line 9"]


def test_tail_of_a_short_file_is_the_whole_file(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    write_lines(log, ["a", "b"])
    assert tail_lines(log, 5) == ["a", "b"]


def test_tail_keeps_an_unterminated_last_line(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("a\nb\nc")
    assert tail_lines(log, 2) == ["b", "c"]


def test_tail_of_a_file_larger_than_one_chunk(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    lines = [f"{i:06d} " + "x" * 90 for i in range(3000)]  # about 290 KiB
    write_lines(log, lines)
    assert log.stat().st_size > 64 * 1024
    assert tail_lines(log, 5) == lines[-5:]
    assert tail_lines(log, 2000) == lines[-2000:]


def test_tail_of_one_line_longer_than_a_chunk(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    long_line = "y" * (200 * 1024)
    write_lines(log, ["first", long_line])
    assert tail_lines(log, 1) == [long_line]


def test_tail_of_a_missing_file_or_no_lines(tmp_path: Path) -> None:
    assert tail_lines(tmp_path / "missing.log", 10) == []
    log = tmp_path / "w.log"
    write_lines(log, ["a"])
    assert tail_lines(log, 0) == []


def test_tail_all_prefixes_each_line_with_the_worker(tmp_path: Path) -> None:
    write_lines(tmp_path / "1.log", ["a1", "a2", "a3"])
    write_lines(tmp_path / "2.log", ["b1"])
    sources = [
        LogSource("dep-aaa", tmp_path / "1.log"),
        LogSource("dep-bbb", tmp_path / "2.log"),
        LogSource("dep-ccc", tmp_path / "missing.log"),
    ]
    assert tail_all(sources, 2) == ["[dep-aaa] a2", "[dep-aaa] a3", "[dep-bbb] b1"]


async def take(it: AsyncIterator[str], n: int) -> list[str]:
    out = []
    for _ in range(n):
        out.append(await anext(it))
    return out


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_follow_yields_tail_then_new_lines_and_new_workers(tmp_path: Path) -> None:
    first = tmp_path / "1.log"
    write_lines(first, ["old1", "old2", "old3"])
    sources = [LogSource("w1", first)]
    gen = follow(lambda: list(sources), 2, poll_s=0.01)
    try:
        assert await asyncio.wait_for(take(gen, 2), 2.0) == ["[w1] old2\n", "[w1] old3\n"]

        # Let follow() get past the tail and into its polling loop before writing.
        pending = asyncio.create_task(take(gen, 2))
        await settle()
        append(first, "new1\npart")
        second = tmp_path / "2.log"
        write_lines(second, ["hello"])
        sources.append(LogSource("w2", second))
        got = await asyncio.wait_for(pending, 2.0)
        assert sorted(got) == ["[w1] new1\n", "[w2] hello\n"]

        append(first, "ial\n")  # the rest of a line written in two pieces
        assert await asyncio.wait_for(take(gen, 1), 2.0) == ["[w1] partial\n"]
    finally:
        await gen.aclose()


async def test_follow_keeps_lines_written_while_the_tail_is_consumed(tmp_path: Path) -> None:
    log = tmp_path / "1.log"
    write_lines(log, ["old"])
    gen = follow(lambda: [LogSource("w1", log)], 1, poll_s=0.01)
    try:
        assert await asyncio.wait_for(take(gen, 1), 2.0) == ["[w1] old\n"]
        append(log, "new\n")
        assert await asyncio.wait_for(take(gen, 1), 0.5) == ["[w1] new\n"]
    finally:
        await gen.aclose()
