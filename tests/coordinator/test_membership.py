from __future__ import annotations

from cluster.coordinator.membership import Membership


def test_join_heartbeat_expire() -> None:
    table = Membership(expiry=3.0)
    assert table.register("g1", "gateway", {"endpoint": "tcp://h:1"}, now=0.0)
    assert table.seq == 1
    assert not table.register("g1", "gateway", {"endpoint": "tcp://h:1"}, now=1.0)
    assert table.seq == 1  # nothing changed, nothing published
    assert table.register("w1", "worker", {}, now=1.0) and table.seq == 2
    assert table.heartbeat("w1", now=3.5)
    assert table.expire(now=4.1)[0].id == "g1"  # silent since 1.0
    assert table.seq == 3 and [m["id"] for m in table.snapshot()] == ["w1"]
    assert not table.heartbeat("g1", now=4.2)  # unknown: must register again


def test_changed_info_is_a_change() -> None:
    table = Membership(expiry=3.0)
    table.register("g1", "gateway", {"endpoint": "a"}, now=0.0)
    assert table.register("g1", "gateway", {"endpoint": "b"}, now=0.0)
    assert table.snapshot() == [{"id": "g1", "role": "gateway", "endpoint": "b"}]


def test_leave() -> None:
    table = Membership(expiry=3.0)
    table.register("w", "worker", {}, now=0.0)
    assert table.leave("w") and not table.leave("w") and table.seq == 2


def test_expire_nothing_keeps_seq() -> None:
    table = Membership(expiry=3.0)
    table.register("w", "worker", {}, now=0.0)
    assert table.expire(now=2.0) == [] and table.seq == 1
