"""Declared accelerator inventory and disjoint device assignment."""

from __future__ import annotations

import pytest

from torpor.gpus import FURIOSA, NVIDIA, GpuPool, parse_declared


def test_parse_count_model_and_memory() -> None:
    devices = parse_declared("4xA100-80GB")
    assert [d.index for d in devices] == [0, 1, 2, 3]
    assert {d.kind for d in devices} == {NVIDIA}
    assert {d.model for d in devices} == {"A100-80GB"}
    assert {d.memory_mb for d in devices} == {81920}


def test_parse_several_kinds() -> None:
    devices = parse_declared("2xH100, 1xRNGD")
    assert [(d.kind, d.index) for d in devices] == [(NVIDIA, 0), (NVIDIA, 1), (FURIOSA, 0)]
    assert devices[0].memory_mb is None


def test_parse_indexes_each_kind_separately() -> None:
    devices = parse_declared("1xH100,2xrngd,1XL4")
    assert [(d.kind, d.index) for d in devices] == [
        (NVIDIA, 0),
        (FURIOSA, 0),
        (FURIOSA, 1),
        (NVIDIA, 1),
    ]


def test_parse_empty_is_no_device() -> None:
    assert parse_declared("") == []


@pytest.mark.parametrize("text", ["A100", "x2A100", "4x", "4 A100", "2xH100,oops", "-1xA100"])
def test_parse_refuses_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="TORPOR_GPUS"):
        parse_declared(text)


def test_allocations_are_disjoint() -> None:
    pool = GpuPool(parse_declared("4xA100-80GB"))
    one = pool.allocate("w1", 1)
    two = pool.allocate("w2", 2)
    assert one is not None and two is not None
    assert len(one) == 1 and len(two) == 2
    assert not set(one) & set(two)
    assert len(pool.free()) == 1


def test_allocate_none_when_not_enough_free() -> None:
    pool = GpuPool(parse_declared("2xH100"))
    assert pool.allocate("w1", 3) is None
    assert pool.holders == {}
    assert pool.allocate("w1", 2) == [0, 1]
    assert pool.allocate("w2", 1) is None


def test_allocate_zero_needs_no_device() -> None:
    pool = GpuPool([])
    assert pool.allocate("w1", 0) == []


def test_allocate_by_kind() -> None:
    pool = GpuPool(parse_declared("1xH100,2xRNGD"))
    assert pool.allocate("w1", 2, FURIOSA) == [0, 1]
    assert pool.allocate("w2", 1) == [0]
    assert pool.allocate("w3", 1, FURIOSA) is None


def test_release_frees_the_workers_devices() -> None:
    pool = GpuPool(parse_declared("2xH100"))
    assert pool.allocate("w1", 1) == [0]
    assert pool.allocate("w2", 1) == [1]
    pool.release("w1")
    assert [d.index for d in pool.free()] == [0]
    assert pool.allocate("w3", 1) == [0]
    pool.release("nobody")
    assert pool.free() == []


def test_env_for_names_the_devices() -> None:
    pool = GpuPool([])
    assert pool.env_for([0, 1]) == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert pool.env_for([2], FURIOSA) == {"FURIOSA_DEVICES": "2"}
    assert pool.env_for([]) == {}
