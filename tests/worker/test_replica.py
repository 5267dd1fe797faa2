"""A worker's replica of the shared state, without processes."""

from __future__ import annotations

import pytest

from cluster.worker.replica import Offer, Replica


def test_replica_applies_in_order_and_holds_the_early() -> None:
    r = Replica()
    r.load("e", 10, [["a", 1, 0]])
    assert r.offer("e", 10, [["a", 9, 0]]) is Offer.STALE
    assert r.offer("e", 12, [["c", 3, 0]]) is Offer.HELD
    assert r.offer("e", 11, [["b", 2, 0]]) is Offer.APPLIED
    assert r.seq == 12 and r.read("c", 0.0) == 3 and r.read("a", 0.0) == 1


def test_replica_resyncs_on_new_epoch_or_a_missed_update() -> None:
    r = Replica()
    r.load("e", 5, [])
    assert r.offer("other", 6, []) is Offer.RESYNC
    assert not r.check("e", 5) and not r.check("e", 4)  # ahead through our own acks: fine
    assert r.check("e", 6) and r.check("other", 5)


def test_replica_updates_held_before_the_snapshot() -> None:
    r = Replica()
    r.held = {4: [["old", 1, 0]], 6: [["new", 1, 0]]}
    r.load("e", 5, [["base", 1, 0]])
    assert r.seq == 6 and set(r.data) == {"base", "new"}


def test_replica_hides_expired_keys() -> None:
    r = Replica()
    r.load("e", 1, [["t", 1, 50.0], ["p", 2, 0]])
    assert r.keys(49.0) == ["t", "p"] and r.keys(50.0) == ["p"]
    with pytest.raises(KeyError):
        r.read("t", 50.0)
