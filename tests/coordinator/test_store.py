"""The coordinator's state store, without processes: batches, limits, TTLs, sequence numbers."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.coordinator.store import StateStore, StoreLimits
from cluster.errors import StateError


def test_batches_are_all_or_nothing() -> None:
    store = StateStore(StoreLimits(max_value=10, max_keys=100))
    store.apply([["set", "a", 1, 0]], 0.0)
    with pytest.raises(StateError, match="over the 10 limit"):
        store.apply([["set", "b", 2, 0], ["set", "c", "x" * 50, 0]], 0.0)
    assert "b" not in store.data and store.seq == 1


def test_key_count_limit() -> None:
    store = StateStore(StoreLimits(max_keys=2))
    store.apply([["set", "a", 1, 0], ["set", "b", 1, 0]], 0.0)
    with pytest.raises(StateError, match="at most 2 keys"):
        store.apply([["set", "c", 1, 0]], 0.0)
    store.apply([["set", "a", 2, 0]], 0.0)  # overwriting is not a new key


@pytest.mark.parametrize("ops", [[], [["set"]], [["set", "", 1, 0]], [["set", "Up", 1, 0]],
                                 [["nope", "a"]], [["set", "a", None, 0]], "x",
                                 [["incr", "a", "1"]], [["set", "a", 1, -1]]])
def test_bad_operations_are_refused(ops: Any) -> None:
    with pytest.raises(StateError):
        StateStore(StoreLimits()).apply(ops, 0.0)


def test_incr_on_a_string_is_refused() -> None:
    store = StateStore(StoreLimits())
    store.apply([["set", "s", "text", 0]], 0.0)
    with pytest.raises(StateError, match="whole numbers"):
        store.apply([["incr", "s", 1]], 0.0)


def test_ttl_expiry() -> None:
    store = StateStore(StoreLimits())
    store.apply([["set", "t", 1, 5.0]], now=100.0)
    assert store.get("t", 104.9) is not None and store.get("t", 105.0) is None
    assert store.expire(104.0) == [] and store.expire(105.0) == [["t", None, 0]]
    assert store.seq == 2


def test_each_changing_batch_gets_one_sequence_number() -> None:
    store = StateStore(StoreLimits())
    _, changes = store.apply([["set", "a", 1, 0], ["incr", "a", 2], ["set", "b", 0, 0]], 0.0)
    assert store.seq == 1 and changes == [["a", 3, 0], ["b", 0, 0]]
    results, changes = store.apply([["cas", "a", 99, 1], ["del", "zz"]], 0.0)
    assert results == [False, False] and changes == [] and store.seq == 1
