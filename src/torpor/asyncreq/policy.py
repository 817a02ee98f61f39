"""Pure decisions for async requests: states, what to claim, retries, backoff, outcomes,
signatures and the body sent to the engine. No clock and no I/O in here."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from torpor.errors import NoCapacity, QueueFull, TorporError, WaitTimeout

SIGNATURE_HEADER = "X-Torpor-Signature"
SIGNATURE_PREFIX = "sha256="


class Status(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
# DELETE works on these.
CANCELLABLE = frozenset({Status.PENDING, Status.PROCESSING})


class WebhookState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def in_flight_limit(max_workers: int, concurrency: int, max_queue: int) -> int:
    """Async requests of one deployment handed to admission at once.

    Enough to fill every slot the deployment may ever have (so the autoscaler sees the
    full demand), never more than the admission queue holds: the rest waits in the
    database, and synchronous requests still find room in the queue.
    """
    return max(1, min(max_workers * concurrency, max(max_queue, 1)))


def free_slots(
    pending: Mapping[str, int], running: Mapping[str, int], limits: Mapping[str, int]
) -> dict[str, int]:
    """How many pending requests to claim per deployment now."""
    out: dict[str, int] = {}
    for deployment, waiting in pending.items():
        free = limits.get(deployment, 1) - running.get(deployment, 0)
        n = min(waiting, free)
        if n > 0:
            out[deployment] = n
    return out


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Delay before try number `attempt + 1` (attempt >= 1): base * 2**(attempt-1), capped."""
    return float(min(max_s, base_s * 2 ** max(0, attempt - 1)))


def is_transient(exc: TorporError) -> bool:
    """Admission refused the request before it reached an engine: worth queueing again."""
    return isinstance(exc, QueueFull | NoCapacity | WaitTimeout)


@dataclass(frozen=True)
class Outcome:
    status: Status
    status_code: int
    error: dict[str, Any] | None


def outcome_of(status_code: int, body: bytes) -> Outcome:
    """Completed for a 2xx answer; otherwise failed, with the engine's error envelope when it
    sent one, else an envelope made from its text."""
    if 200 <= status_code < 300:
        return Outcome(Status.COMPLETED, status_code, None)
    return Outcome(Status.FAILED, status_code, _error_from(status_code, body))


def outcome_of_error(exc: TorporError) -> Outcome:
    return Outcome(Status.FAILED, exc.status, error_dict(exc))


def error_dict(exc: TorporError) -> dict[str, Any]:
    return {"message": exc.message, "type": exc.type, "code": exc.code, "param": None}


def _error_from(status_code: int, body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return dict(parsed["error"])
    text = body.decode("utf-8", "replace").strip()[:2000] or f"HTTP {status_code}"
    kind = "invalid_request_error" if status_code < 500 else "server_error"
    return {"message": text, "type": kind, "code": f"http_{status_code}", "param": None}


def engine_body(body: bytes, deployment: str | None) -> bytes:
    """The body an async request sends: streaming off (the final JSON is what gets stored),
    and `model` set to the deployment when given."""
    if not body:
        return body
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(payload, dict):
        return body
    changed = False
    if payload.get("stream") is not False and "stream" in payload:
        payload["stream"] = False
        changed = True
    if "stream_options" in payload:
        del payload["stream_options"]  # engines reject it when stream is off
        changed = True
    if deployment is not None and payload.get("model") != deployment:
        payload["model"] = deployment
        changed = True
    return orjson.dumps(payload) if changed else body


def sign(secret: str, body: bytes) -> str:
    """The X-Torpor-Signature value: "sha256=" + hex HMAC-SHA256 of the exact body bytes."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify(secret: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, body), signature)


def is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")
