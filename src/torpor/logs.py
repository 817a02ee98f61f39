"""Worker log files: tail the last lines, follow appended lines, prefix with the worker id."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 64 * 1024


def tail_lines(path: Path, n: int) -> list[str]:
    """The last n lines of a file without reading all of it."""
    if n <= 0:
        return []
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            data = b""
            pos = end
            while pos > 0 and data.count(b"\n") <= n:
                step = min(_CHUNK, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except OSError:
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[-n:]


@dataclass(frozen=True)
class LogSource:
    worker_id: str
    path: Path


def tail_all(sources: Sequence[LogSource], n: int) -> list[str]:
    """The last n lines of each worker's log, prefixed with its id, workers in given order."""
    out: list[str] = []
    for src in sources:
        out.extend(f"[{src.worker_id}] {line}" for line in tail_lines(src.path, n))
    return out


def _sizes(paths: Sequence[Path]) -> dict[Path, int]:
    out = {}
    for path in paths:
        try:
            out[path] = path.stat().st_size
        except OSError:
            out[path] = 0
    return out


def _read_new(path: Path, start: int) -> tuple[bytes, int] | None:
    """Bytes appended since `start` and the new end, or None when nothing was."""
    try:
        size = path.stat().st_size
        if size <= start:
            return None
        with path.open("rb") as f:
            f.seek(start)
            return f.read(size - start), size
    except OSError:
        return None


def _read_round(offsets: dict[Path, int], paths: Sequence[Path]) -> dict[Path, bytes]:
    """One polling round over every file (run in a thread): new bytes per file."""
    out = {}
    for path in paths:
        got = _read_new(path, offsets.setdefault(path, 0))
        if got is not None:
            out[path], offsets[path] = got
    return out


async def atail_all(sources: Sequence[LogSource], n: int) -> list[str]:
    """`tail_all` off the event loop."""
    return await asyncio.to_thread(tail_all, list(sources), n)


async def follow(
    sources: Callable[[], Sequence[LogSource]], n: int, poll_s: float = 0.25
) -> AsyncIterator[str]:
    """Yield the tail, then every new line of every worker's log, including workers that
    start later, until the consumer stops iterating. File I/O runs in a thread."""
    partial: dict[Path, bytes] = {}
    # Offsets first, tail second: a line written while the tail goes out is sent after it
    # (possibly twice), never lost.
    offsets = await asyncio.to_thread(_sizes, [src.path for src in sources()])
    for line in await atail_all(sources(), n):
        yield line + "\n"
    while True:
        await asyncio.sleep(poll_s)
        current = list(sources())
        names = {src.path: src.worker_id for src in current}
        fresh = await asyncio.to_thread(_read_round, offsets, list(names))
        for path, chunk in fresh.items():
            data = partial.pop(path, b"") + chunk
            *complete, rest = data.split(b"\n")
            if rest:
                partial[path] = rest
            for raw in complete:
                yield f"[{names[path]}] {raw.decode(errors='replace')}\n"


async def follow_file(
    path: Path, start: int | None = None, poll_s: float = 0.25
) -> AsyncIterator[str]:
    """New lines of one file from `start` (default: its end now), read in a thread."""
    offsets = {
        path: start if start is not None else (await asyncio.to_thread(_sizes, [path]))[path]
    }
    partial = b""
    while True:
        await asyncio.sleep(poll_s)
        fresh = await asyncio.to_thread(_read_round, offsets, [path])
        if path not in fresh:
            continue
        *complete, partial = (partial + fresh[path]).split(b"\n")
        for raw in complete:
            yield raw.decode(errors="replace") + "\n"
