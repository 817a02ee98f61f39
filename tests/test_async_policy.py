"""The pure decisions behind async requests: claims, backoff, outcomes, bodies, signatures."""

from __future__ import annotations

import hashlib
import hmac

import orjson

from torpor.asyncreq.policy import (
    Status,
    backoff_s,
    engine_body,
    free_slots,
    in_flight_limit,
    is_transient,
    outcome_of,
    outcome_of_error,
    sign,
    verify,
)
from torpor.errors import NoCapacity, QueueFull, UpstreamError, WaitTimeout


def test_in_flight_limit_fills_every_slot_but_never_the_whole_queue() -> None:
    assert in_flight_limit(max_workers=2, concurrency=4, max_queue=100) == 8
    assert in_flight_limit(max_workers=10, concurrency=8, max_queue=20) == 20
    assert in_flight_limit(max_workers=1, concurrency=1, max_queue=0) == 1


def test_free_slots_per_deployment() -> None:
    pending = {"a": 10, "b": 2, "c": 5}
    running = {"a": 3, "c": 4}
    limits = {"a": 4, "b": 8, "c": 4}
    assert free_slots(pending, running, limits) == {"a": 1, "b": 2}
    # An unknown deployment gets one at a time (it fails with a 404).
    assert free_slots({"gone": 3}, {}, {}) == {"gone": 1}


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(n, 1.0, 5.0) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff_s(0, 0.5, 10.0) == 0.5


def test_only_admission_refusals_are_retried() -> None:
    assert is_transient(QueueFull())
    assert is_transient(NoCapacity())
    assert is_transient(WaitTimeout())
    assert not is_transient(UpstreamError())


def test_outcomes() -> None:
    ok = outcome_of(200, b'{"id": "x"}')
    assert ok.status is Status.COMPLETED and ok.error is None
    envelope = {"error": {"message": "no", "type": "invalid_request_error", "code": "c"}}
    bad = outcome_of(400, orjson.dumps(envelope))
    assert bad.status is Status.FAILED and bad.status_code == 400
    assert bad.error == envelope["error"]
    text = outcome_of(404, b"404: Not Found")
    assert text.error is not None
    assert text.error["message"] == "404: Not Found" and text.error["code"] == "http_404"
    assert outcome_of(503, b"").error == {
        "message": "HTTP 503",
        "type": "server_error",
        "code": "http_503",
        "param": None,
    }
    err = outcome_of_error(UpstreamError())
    assert err.status_code == 502 and err.error is not None
    assert err.error["code"] == "worker_error"


def test_engine_body_turns_streaming_off_and_names_the_deployment() -> None:
    body = orjson.dumps({"model": "x", "stream": True, "stream_options": {"include_usage": True}})
    out = orjson.loads(engine_body(body, "dep"))
    assert out == {"model": "dep", "stream": False}
    plain = b'{"model": "x"}'
    assert engine_body(plain, None) == plain
    assert engine_body(b"not json", "dep") == b"not json"
    assert engine_body(b"", "dep") == b""


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    body = b'{"id": "req_1", "status": "completed"}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign("s3cret", body) == "sha256=" + expected
    assert verify("s3cret", body, "sha256=" + expected)
    assert not verify("s3cret", body + b" ", "sha256=" + expected)
    assert not verify("other", body, "sha256=" + expected)
