"""Pure routing: pick the worker for a request from the workers with a free slot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    id: str
    inflight: int
    concurrency: int

    @property
    def free(self) -> int:
        return self.concurrency - self.inflight


def pick_worker(
    candidates: Sequence[Candidate],
    session_id: str | None,
    affinity: Mapping[str, str],
) -> str | None:
    """The session's worker when it has a free slot, else the least loaded with a free slot.

    Ties go to the earliest candidate, so routing is deterministic for tests.
    """
    free = [c for c in candidates if c.free > 0]
    if not free:
        return None
    if session_id is not None:
        pinned = affinity.get(session_id)
        if pinned is not None:
            for c in free:
                if c.id == pinned:
                    return c.id
    best = min(free, key=lambda c: (c.inflight / c.concurrency, c.inflight))
    return best.id
