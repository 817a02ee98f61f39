"""Download progress, written by the fetching thread and read by the API (plain fields)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class DownloadProgress:
    source: str
    bytes_done: int = 0
    bytes_total: int | None = None
    files: int | None = None
    done: bool = False

    @property
    def percent(self) -> float | None:
        if not self.bytes_total:
            return 100.0 if self.done else None
        return round(min(100.0, 100.0 * self.bytes_done / self.bytes_total), 1)

    def view(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "percent": self.percent,
            "files": self.files,
            "done": self.done,
        }


def tree_size(path: Path) -> int:
    """Bytes of the regular files under `path` (a file: its size), not following links."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue  # moved or removed while walking (a finished download)
            total += st.st_size
    return total
