"""Pure health decisions: what a worker's poll or probe means, with no clock and no I/O.

The controller polls every live worker (cheap) and probes the ones still starting; this
module turns those observations into verdicts the loop applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from torpor.runtime.base import ProbeResult
from torpor.states import WorkerState


class Verdict(StrEnum):
    UNCHANGED = "unchanged"
    READY = "ready"
    # Not placed yet: the worker waits for capacity (no start timeout meanwhile).
    PENDING = "pending"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class HealthView:
    worker_id: str
    state: WorkerState
    started_mono: float
    # From the cheap poll: the exit code and reason once the worker has ended.
    exit_code: int | None = None
    exit_reason: str | None = None
    ended: bool = False
    # From a readiness probe this cycle (starting workers only).
    probe: ProbeResult | None = None


@dataclass(frozen=True)
class Judgement:
    worker_id: str
    verdict: Verdict
    reason: str | None = None
    exit_code: int | None = None


def judge(view: HealthView, now: float, start_timeout_s: float) -> Judgement:
    """One worker's verdict from what was observed of it this cycle."""
    probe = view.probe
    ended = view.ended or view.exit_code is not None
    code = view.exit_code
    why = view.exit_reason
    if not ended and probe is not None and probe.exited:
        ended, code, why = True, probe.exit_code, probe.reason
    if ended:
        was = "before it was ready" if view.state is WorkerState.PROVISIONING else "unexpectedly"
        reason = why or f"exited with code {code} {was}"
        return Judgement(view.worker_id, Verdict.FAILED, reason, code)
    if view.state is not WorkerState.PROVISIONING:
        return Judgement(view.worker_id, Verdict.UNCHANGED)
    if probe is not None and probe.ready:
        return Judgement(view.worker_id, Verdict.READY)
    if probe is not None and probe.pending:
        return Judgement(view.worker_id, Verdict.PENDING, probe.reason)
    if now - view.started_mono > start_timeout_s:
        return Judgement(
            view.worker_id, Verdict.TIMED_OUT, f"not ready after {start_timeout_s:.0f}s"
        )
    return Judgement(view.worker_id, Verdict.UNCHANGED, probe.reason if probe else None)


def crash_looping(failures: int, threshold: int) -> bool:
    """A deployment whose workers failed this many times in a row shows `error`."""
    return failures >= threshold


class SuspectVerdict(StrEnum):
    """What a health probe of a worker that let a request time out says."""

    # It answers its health route: the request was slow, the worker stays.
    RECOVERED = "recovered"
    # Another probe decides (one failed probe is not enough).
    PROBE_AGAIN = "probe_again"
    # It answers nothing, not even its health route: replace it.
    UNRESPONSIVE = "unresponsive"
    # It has ended: the normal failure path takes it.
    ENDED = "ended"


def judge_suspect(probe: ProbeResult, failed_before: int, probes_to_fail: int) -> SuspectVerdict:
    """A worker that took a request and said nothing until the request timeout is probed
    (a health request with a short timeout), never taken out on the timeout alone: only
    `probes_to_fail` failed probes in a row make it unresponsive."""
    if probe.exited:
        return SuspectVerdict.ENDED
    if probe.ready:
        return SuspectVerdict.RECOVERED
    if failed_before + 1 >= probes_to_fail:
        return SuspectVerdict.UNRESPONSIVE
    return SuspectVerdict.PROBE_AGAIN
