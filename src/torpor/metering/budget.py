"""Budget verdicts: pure functions of what was spent and what the caps are."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caps:
    usd: float | None = None
    tokens: int | None = None

    @property
    def any(self) -> bool:
        return self.usd is not None or self.tokens is not None


@dataclass(frozen=True)
class Spent:
    usd: float = 0.0
    tokens: int = 0


def over_budget(who: str, spent: Spent, caps: Caps) -> str | None:
    """The refusal message when `spent` has reached a cap, else None.

    Checked before admission against month-to-date usage of finished requests, so the
    overshoot is bounded by the requests already in flight when the cap was reached.
    """
    if caps.usd is not None and spent.usd >= caps.usd:
        return f"Budget exceeded for {who}: ${spent.usd:.6f} of ${caps.usd:.6f}"
    if caps.tokens is not None and spent.tokens >= caps.tokens:
        return f"Budget exceeded for {who}: {spent.tokens} of {caps.tokens} tokens"
    return None
