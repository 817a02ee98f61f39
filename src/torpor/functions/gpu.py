"""GPU requests as strings: `"L4"`, `"H100:2"`, `"any"`, `"any:4"`, or a list of acceptable
types (`["A100", "H100"]`). Pure functions; the controller matches the types against its
inventory (`torpor.gpus.matches_model`) through the spec's `gpu_type`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_ITEM_RE = re.compile(r"^\s*([A-Za-z0-9._-]+)\s*(?::\s*(\d+))?\s*$")
ANY = "any"


@dataclass(frozen=True)
class GpuRequest:
    count: int
    # Acceptable device types; empty means any type.
    types: tuple[str, ...] = ()

    @property
    def gpu_type(self) -> str | None:
        """The deployment spec's `gpu_type`: the acceptable types, comma-separated."""
        return ",".join(self.types) or None


def parse_gpu(value: str | Sequence[str] | None) -> GpuRequest:
    """The count and acceptable types of a `gpu=` argument; ValueError when malformed."""
    if value is None:
        return GpuRequest(0)
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ValueError("gpu: an empty list names no GPU type")
    counts: set[int] = set()
    types: list[str] = []
    for item in items:
        m = _ITEM_RE.match(str(item))
        if not m:
            raise ValueError(f"gpu: cannot parse {item!r}; expected e.g. 'L4', 'H100:2', 'any'")
        name, count = m.group(1), int(m.group(2) or 1)
        if count < 1:
            raise ValueError(f"gpu: {item!r} asks for no GPU; leave gpu unset for the CPU")
        counts.add(count)
        if name.lower() != ANY:
            types.append(name)
        elif len(items) > 1:
            raise ValueError("gpu: 'any' cannot be combined with GPU types")
    if len(counts) > 1:
        raise ValueError(f"gpu: the types of one request must ask for one count, got {items!r}")
    return GpuRequest(counts.pop(), tuple(types))
