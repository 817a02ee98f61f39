"""Routing: least-loaded worker with a free slot, sticky sessions."""

from __future__ import annotations

from torpor.router import Candidate, pick_worker


def c(id: str, inflight: int, concurrency: int = 4) -> Candidate:
    return Candidate(id, inflight, concurrency)


def test_least_loaded_worker_is_picked() -> None:
    assert pick_worker([c("a", 3), c("b", 1), c("c", 2)], None, {}) == "b"


def test_load_is_relative_to_concurrency() -> None:
    # a is 2/8 busy, b is 1/2 busy.
    assert pick_worker([c("b", 1, 2), c("a", 2, 8)], None, {}) == "a"


def test_ties_go_to_the_first_candidate() -> None:
    assert pick_worker([c("a", 1), c("b", 1)], None, {}) == "a"
    assert pick_worker([c("b", 0), c("a", 0)], None, {}) == "b"


def test_none_when_every_worker_is_full() -> None:
    assert pick_worker([c("a", 4), c("b", 2, 2)], None, {}) is None
    assert pick_worker([], None, {}) is None


def test_session_goes_to_its_pinned_worker_while_it_has_a_slot() -> None:
    candidates = [c("a", 0), c("b", 3)]
    assert pick_worker(candidates, "s1", {"s1": "b"}) == "b"


def test_session_falls_back_when_pinned_worker_is_full() -> None:
    candidates = [c("a", 2), c("b", 4), c("c", 1)]
    assert pick_worker(candidates, "s1", {"s1": "b"}) == "c"


def test_session_falls_back_when_pinned_worker_is_gone() -> None:
    candidates = [c("a", 2), c("c", 1)]
    assert pick_worker(candidates, "s1", {"s1": "b"}) == "c"


def test_unknown_session_gets_least_loaded() -> None:
    candidates = [c("a", 2), c("b", 0)]
    assert pick_worker(candidates, "new", {"s1": "a"}) == "b"
