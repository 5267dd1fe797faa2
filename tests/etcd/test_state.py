"""The etcd backend's pure parts: the URL, the replica's mapping of values."""

from __future__ import annotations

import msgpack
import pytest

from cluster.errors import ConfigError
from cluster.etcd.commits import KnownValues
from cluster.etcd.session import parse_backend


def test_the_backend_url_names_members_and_a_prefix() -> None:
    target = parse_backend("etcd://10.0.0.1:2379,10.0.0.2:2379,[::1]:2379/shop")
    assert target.endpoints == (("10.0.0.1", 2379), ("10.0.0.2", 2379), ("::1", 2379))
    assert target.prefix == b"/shop/"
    assert parse_backend("etcd://h:1").prefix == b"/cluster/"


@pytest.mark.parametrize("url", ["redis://h:1", "etcd://", "etcd://h", "etcd://h:0",
                                 "etcd://h:99999", "etcd://h:1/a/b", "etcd://:1"])
def test_a_bad_backend_url_is_one_clear_error(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_backend(url)


def test_the_replica_keeps_values_expiries_and_revisions() -> None:
    replica = KnownValues()
    replica.reset(10)
    replica.put("a", msgpack.packb([1, 0]), 11)
    replica.put("t", msgpack.packb(["x", 100.0]), 12)
    replica.put("junk", b"\xc1", 13)  # not ours: ignored, one log line
    assert replica.read("a", 50.0) == 1 and replica.revisions["a"] == 11
    assert replica.read("t", 99.0) == "x"
    with pytest.raises(KeyError):
        replica.read("t", 100.0)  # expired: hidden before etcd's lease removes it
    assert sorted(replica.keys(50.0)) == ["a", "t"] and "junk" not in replica.data
    replica.delete("a")
    assert "a" not in replica.revisions and replica.keys(150.0) == []


def test_a_history_value_and_epoch() -> None:
    from cluster.etcd.history import epoch_of, pack, unpack
    assert unpack(pack({"n": 1}, 12.5)) == (12.5, {"n": 1})
    assert unpack(b"\xc1") is None  # not ours: skipped, counted
    assert epoch_of(0xE3C1, 57) == "e3c1.57"
