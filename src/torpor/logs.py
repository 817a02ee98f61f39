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


async def follow(
    sources: Callable[[], Sequence[LogSource]], n: int, poll_s: float = 0.25
) -> AsyncIterator[str]:
    """Yield the tail, then every new line of every worker's log, including workers that
    start later, until the consumer stops iterating."""
    offsets: dict[Path, int] = {}
    partial: dict[Path, bytes] = {}
    # Offsets first, tail second: a line written while the tail goes out is sent after it
    # (possibly twice), never lost.
    for src in sources():
        try:
            offsets[src.path] = src.path.stat().st_size
        except OSError:
            offsets[src.path] = 0
    for line in tail_all(sources(), n):
        yield line + "\n"
    while True:
        await asyncio.sleep(poll_s)
        for src in sources():
            start = offsets.setdefault(src.path, 0)
            try:
                size = src.path.stat().st_size
                if size <= start:
                    continue
                with src.path.open("rb") as f:
                    f.seek(start)
                    data = partial.pop(src.path, b"") + f.read(size - start)
            except OSError:
                continue
            offsets[src.path] = size
            *complete, rest = data.split(b"\n")
            if rest:
                partial[src.path] = rest
            for raw in complete:
                yield f"[{src.worker_id}] {raw.decode(errors='replace')}\n"
