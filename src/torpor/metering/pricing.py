"""Prices and costs: pure arithmetic on rates, no clock and no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property

HOURS_PER_MONTH = 730.0
_NANO = Decimal(1_000_000_000)  # nano-dollars per USD
_NANO_PER_GB_SECOND_MONTH = Decimal(1_000_000_000) / Decimal(3600) / Decimal(repr(HOURS_PER_MONTH))


def _d(value: float) -> Decimal:
    return Decimal(repr(value))


@dataclass(frozen=True)
class Prices:
    """Effective rates for one deployment (settings' defaults, overridden per deployment)."""

    prompt_per_mtok: float
    completion_per_mtok: float
    # USD per device-hour for this deployment's workers (0 for CPU-only workers unless set).
    gpu_hourly: float
    storage_gb_month: float
    # USD per device-hour while a worker sleeps (None: the full GPU rate, since a sleeping
    # worker still holds its devices).
    gpu_hourly_sleeping: float | None = None

    @cached_property
    def prompt_token_usd(self) -> Decimal:
        """USD per prompt token, exact (computed once per Prices: budget reservations use it
        on the request path)."""
        return Decimal(repr(self.prompt_per_mtok)) / 1_000_000

    @cached_property
    def completion_token_usd(self) -> Decimal:
        return Decimal(repr(self.completion_per_mtok)) / 1_000_000

    @property
    def sleeping_hourly(self) -> float:
        return self.gpu_hourly if self.gpu_hourly_sleeping is None else self.gpu_hourly_sleeping

    def request_usd(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """A request's token cost in USD, exact (what a reservation holds, unrounded)."""
        return prompt_tokens * self.prompt_token_usd + completion_tokens * self.completion_token_usd

    def request_nusd(self, prompt_tokens: int, completion_tokens: int) -> int:
        """A request's token cost in integer nano-dollars (exact decimals, then rounded)."""
        return int((self.request_usd(prompt_tokens, completion_tokens) * _NANO).to_integral_value())

    def storage_nusd(self, gb_seconds: float) -> int:
        """Storage cost of `gb_seconds` in integer nano-dollars."""
        cost = _d(gb_seconds) * _d(self.storage_gb_month) * _NANO_PER_GB_SECOND_MONTH
        return int(cost.to_integral_value())
