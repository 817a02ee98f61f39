"""GPU time of a worker, split between the keys it served and the deployment (chargeback).

Pure bookkeeping: times come in as arguments, nothing here reads a clock or does I/O.

A worker's billed time from one accrual to the next is cut into start-up (before it was
ready), busy time and idle time. Busy time is shared among the requests in flight at each
instant, so a key's share of an interval is its share of the worker's request-seconds in
that interval: with two requests of key A and one of key B running, A is charged 2/3 of
that stretch and B 1/3. Start-up and idle time belong to the deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class BusyClock:
    """Requests in flight on one worker, by key, and the busy seconds owed to each key
    since the last accrual."""

    inflight: dict[str, int] = field(default_factory=dict)
    since: datetime | None = None
    owed: dict[str, float] = field(default_factory=dict)

    def advance(self, now: datetime) -> None:
        """Charge the stretch since the last event to the requests in flight during it."""
        if self.since is not None and self.inflight and now > self.since:
            dt = (now - self.since).total_seconds()
            n = sum(self.inflight.values())
            for key, count in self.inflight.items():
                self.owed[key] = self.owed.get(key, 0.0) + dt * count / n
        if self.since is None or now > self.since:
            self.since = now

    def begin(self, key: str, now: datetime) -> None:
        self.advance(now)
        self.inflight[key] = self.inflight.get(key, 0) + 1

    def end(self, key: str, now: datetime) -> None:
        self.advance(now)
        left = self.inflight.get(key, 0) - 1
        if left > 0:
            self.inflight[key] = left
        else:
            self.inflight.pop(key, None)

    def take(self, now: datetime) -> dict[str, float]:
        """The busy seconds owed up to `now`, by key; the clock starts again from zero."""
        self.advance(now)
        owed, self.owed = self.owed, {}
        return owed


@dataclass(frozen=True)
class Split:
    """One accrual interval of one worker, in seconds of wall time."""

    total_s: float
    startup_s: float
    idle_s: float
    busy_s: dict[str, float]


def split_interval(
    begin: datetime,
    end: datetime,
    started_at: datetime,
    ready_at: datetime | None,
    busy: dict[str, float],
) -> Split:
    """Cut [begin, end] of a worker's life into start-up, busy time per key and idle time.
    The parts always sum to the interval: busy time beyond what the interval can hold
    (clocks read a moment apart) is scaled down to fit."""
    total = max(0.0, (end - begin).total_seconds())
    ready = ready_at if ready_at is not None else end
    startup_end = min(max(ready, begin), end)
    startup = max(0.0, (startup_end - max(begin, started_at)).total_seconds())
    startup = min(startup, total)
    room = total - startup
    owed = sum(busy.values())
    scale = room / owed if owed > room and owed > 0 else 1.0
    shares = {k: v * scale for k, v in busy.items() if v > 0}
    idle = max(0.0, room - sum(shares.values()))
    return Split(total, startup, idle, shares)
