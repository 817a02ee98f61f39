"""Prices and costs: pure arithmetic on rates, no clock and no I/O."""

from __future__ import annotations

from dataclasses import dataclass

HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class Prices:
    """Effective rates for one deployment (settings' defaults, overridden per deployment)."""

    prompt_per_mtok: float
    completion_per_mtok: float
    # USD per device-hour for this deployment's workers (0 for CPU-only workers unless set).
    gpu_hourly: float
    storage_gb_month: float

    def request_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.prompt_per_mtok + completion_tokens * self.completion_per_mtok
        ) / 1_000_000

    def worker_cost(self, seconds: float, devices: int) -> float:
        return seconds / 3600.0 * max(devices, 0) * self.gpu_hourly

    def storage_cost(self, gb_seconds: float) -> float:
        return gb_seconds / 3600.0 / HOURS_PER_MONTH * self.storage_gb_month
