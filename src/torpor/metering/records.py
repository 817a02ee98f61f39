"""What the meter records: requests, worker sessions, reservations, months of spend.

Plain data and pure helpers (no clock, no I/O), shared by the meter and the read side.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from torpor.errors import BudgetExceeded as BudgetExceeded
from torpor.metering.budget import Spent
from torpor.metering.gpu import BusyClock

NANO = 1_000_000_000
# Money in JSON: USD numbers rounded (half to even) to 6 decimals from the exact amounts;
# a total is the sum of its rounded parts, so parts add up to it exactly. CSV: 6 fixed
# decimals. Stored amounts are integer nano-dollars.
MONEY_PLACES = Decimal("0.000001")


@dataclass
class RequestUsage:
    at: datetime
    deployment: str
    key_id: str
    session_id: str | None
    route: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    ttft_ms: float | None
    latency_ms: float
    queue_ms: float
    cold_start: bool
    stream: bool
    # Token cost in integer nano-dollars (computed exactly from the prices).
    cost_nusd: int = 0
    # It waited for a sleeping worker to wake (not a cold start), and that wake's length.
    woke_worker: bool = False
    wake_ms: float | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class WorkerSession:
    worker_id: str
    deployment: str
    gpu_kind: str
    gpu_count: int
    hourly_rate: float
    started_at: datetime
    ready_at: datetime | None = None
    stopped_at: datetime | None = None
    reason: str | None = None
    # GPU time is accrued (and the heartbeat written) up to here.
    accrued_to: datetime | None = None
    busy: BusyClock = field(default_factory=BusyClock)
    # The key whose request waited for this worker's start (its cold-start share).
    cold_key: str | None = None
    # Device-hour rate while it sleeps; when it fell asleep (None: awake) and the seconds
    # it has slept so far (accrued).
    sleeping_rate: float = 0.0
    asleep_at: datetime | None = None
    sleeping_s: float = 0.0

    @property
    def startup_s(self) -> float | None:
        if self.ready_at is None:
            return None
        return (self.ready_at - self.started_at).total_seconds()


_ids = itertools.count(1)


@dataclass
class Reservation:
    """What an admitted request may still spend; released when its usage is recorded, or
    when it expires (a request that never recorded cannot hold a budget for ever)."""

    key_id: str
    deployment: str
    tokens: int
    usd: float
    # The request body with the completion limit torpor set, when it set one.
    body: bytes | None = None
    expires: float = 0.0
    released: bool = False
    id: int = field(default_factory=lambda: next(_ids))


@dataclass
class Month:
    # First instant of the next month: the request path compares, never formats.
    ends: datetime
    by_key: dict[str, Spent] = field(default_factory=dict)
    by_deployment: dict[str, Spent] = field(default_factory=dict)
    # GPU cost attributed to each key (chargeback), in USD.
    gpu_by_key: dict[str, float] = field(default_factory=dict)


def month_start(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def new_month(at: datetime) -> Month:
    start = month_start(at)
    return Month(ends=(start + timedelta(days=32)).replace(day=1))


def money_decimal(value: float | Decimal | int, nano: bool = False) -> Decimal:
    """`value` USD (or nano-dollars when `nano`) at the fixed precision of MONEY_PLACES."""
    if isinstance(value, float):
        amount = Decimal(repr(value))
    else:
        amount = Decimal(value) / NANO if nano else Decimal(value)
    return amount.quantize(MONEY_PLACES, rounding=ROUND_HALF_EVEN)


def money(value: float | Decimal | int, nano: bool = False) -> float:
    """A money amount for JSON: a number rounded to MONEY_PLACES (see there)."""
    return float(money_decimal(value, nano))


def nano_usd(seconds: float, rate_hourly: float) -> int:
    """Cost of `seconds` device-seconds at an hourly rate, in integer nano-dollars."""
    return int((Decimal(repr(seconds)) * Decimal(repr(rate_hourly)) * NANO / 3600).to_integral())
