"""Shared state without processes: the view, the store, the log and the replica."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from cluster.coordinator.store import StateStore, StoreLimits
from cluster.coordinator.wal import HEADER, WriteAheadLog
from cluster.errors import ReadOnlyKey, StateError
from cluster.state import SharedState
from cluster.worker.adapters import FunctionHandler, split_state
from cluster.worker.replica import Offer, Replica
from tests.unit.store_backend import StoreBackend

# -- the view ---------------------------------------------------------------------

def test_view_reads_its_own_buffered_writes() -> None:
    backend = StoreBackend()
    backend.call([["set", "a", 1, 0]])
    view = SharedState(backend)
    view["b"] = 2
    del view["a"]
    assert "a" not in view and view["b"] == 2 and dict(view) == {"b": 2}
    assert backend.store.get("a", 0.0) is not None  # nothing sent yet
    assert view.take_batch() == [["set", "b", 2, 0], ["del", "a"]]
    assert view.take_batch() == []


def test_view_framework_keys_are_read_only() -> None:
    view = SharedState(StoreBackend())
    assert view["WORKER"] == "wk-1"
    with pytest.raises(ReadOnlyKey):
        view["WORKER"] = "x"
    with pytest.raises(ReadOnlyKey):
        view.incr("Counter")


def test_view_atomic_ops_go_straight_through() -> None:
    backend = StoreBackend()
    view = SharedState(backend)
    assert view.incr("n") == 1 and view.incr("n", 5) == 6
    assert view.cas("n", 6, 7) and not view.cas("n", 6, 8)
    assert view.setdefault("d", "first") == "first" and view.setdefault("d", "x") == "first"
    assert view.delete("d") and not view.delete("d")
    assert view["n"] == 7
    with pytest.raises(StateError):
        view.incr("n", 1.5)  # type: ignore[arg-type]


def test_seed_style_returned_dict_becomes_writes() -> None:
    backend = StoreBackend()
    backend.call([["set", "keep", 1, 0], ["set", "same", 2, 0]])
    view = SharedState(backend)
    msg = split_state(("ok", {"same": 2, "new": 3, "WORKER": "ignored"}), view)
    assert msg == "ok"
    assert view.take_batch() == [["set", "new", 3, 0]]  # unchanged and missing: no write


def test_function_handler_gives_each_call_its_own_view() -> None:
    handler = FunctionHandler(lambda req, state: ("ok", state), StoreBackend())
    a, b = handler.prepare({}), handler.prepare({})
    assert a.state is not b.state and a.args[1] is a.state


# -- the store ----------------------------------------------------------------------

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


# -- the log --------------------------------------------------------------------------

def fill(path: Path, n: int, fsync: str = "batch") -> WriteAheadLog:
    wal = WriteAheadLog(path, fsync)
    wal.open()
    for i in range(1, n + 1):
        wal.append(i, [[f"k{i}", i, 0]])
    wal.sync()
    return wal


def test_log_round_trip(tmp_path: Path) -> None:
    fill(tmp_path, 5, "always").close()
    rec = WriteAheadLog(tmp_path, "always").open()
    assert [r[0] for r in rec.records] == [1, 2, 3, 4, 5] and rec.cut_bytes == 0


def test_torn_tail_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    fill(tmp_path, 5).close()
    log_path = tmp_path / "state.log"
    size = log_path.stat().st_size
    with open(log_path, "r+b") as f:
        f.truncate(size - 3)  # the last record half-written
    rec = WriteAheadLog(tmp_path, "batch").open()
    assert [r[0] for r in rec.records] == [1, 2, 3, 4] and rec.cut_bytes > 0
    assert log_path.stat().st_size < size - 3  # cut at the last good record


def test_flipped_byte_keeps_every_record_before_it(tmp_path: Path) -> None:
    fill(tmp_path, 5).close()
    log_path = tmp_path / "state.log"
    data = bytearray(log_path.read_bytes())
    record = HEADER.size + HEADER.unpack_from(data, 0)[0]
    data[record * 2 + HEADER.size + 2] ^= 0xFF  # inside the third record's payload
    log_path.write_bytes(bytes(data))
    rec = WriteAheadLog(tmp_path, "batch").open()
    assert [r[0] for r in rec.records] == [1, 2]


def test_snapshot_compacts_and_replay_skips_older_records(tmp_path: Path) -> None:
    wal = fill(tmp_path, 3)
    wal.snapshot(3, [["k1", 1, 0], ["k2", 2, 0], ["k3", 3, 0]])
    assert (tmp_path / "state.log").stat().st_size == 0
    wal.append(4, [["k4", 4, 0]])
    wal.close()
    rec = WriteAheadLog(tmp_path, "batch").open()
    assert rec.seq == 3 and len(rec.entries) == 3 and [r[0] for r in rec.records] == [4]


def test_crash_between_snapshot_and_truncate_is_safe(tmp_path: Path) -> None:
    wal = fill(tmp_path, 3)
    log_bytes = (tmp_path / "state.log").read_bytes()
    wal.snapshot(3, [["k3", 3, 0]])
    wal.close()
    (tmp_path / "state.log").write_bytes(log_bytes)  # as if the truncate never happened
    rec = WriteAheadLog(tmp_path, "batch").open()
    assert rec.seq == 3 and rec.records == []


def test_damaged_snapshot_refuses_to_start(tmp_path: Path) -> None:
    fill(tmp_path, 1).snapshot(1, [["a", 1, 0]])
    snap = tmp_path / "state.snapshot"
    data = bytearray(snap.read_bytes())
    data[-1] ^= 1
    snap.write_bytes(bytes(data))
    with pytest.raises(OSError, match="damaged"):
        WriteAheadLog(tmp_path, "batch").open()


def test_record_framing_is_length_and_crc(tmp_path: Path) -> None:
    fill(tmp_path, 1).close()
    data = (tmp_path / "state.log").read_bytes()
    length, crc = HEADER.unpack_from(data, 0)
    assert length == len(data) - HEADER.size and crc == zlib.crc32(data[HEADER.size:])
    assert os.path.getsize(tmp_path / "state.log") == len(data)


# -- the replica ------------------------------------------------------------------------

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


def test_a_failed_write_leaves_no_torn_record_and_the_log_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    from cluster.coordinator import wal as wal_module
    wal = fill(tmp_path, 3)
    good = wal.log_path.stat().st_size
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:  # a disk that fills mid-record
        if len(data) > 4:
            return real_write(fd, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wal_module.os, "write", half_then_full)
    wal.append(4, [["big", "x" * 100, 0]])
    with pytest.raises(OSError):
        wal.flush()
    monkeypatch.setattr(wal_module.os, "write", real_write)
    assert wal.log_path.stat().st_size == good == wal.written
    assert [r[0] for r in wal.reread().records] == [1, 2, 3]
    wal.append(4, [["k4", 4, 0]])  # room again: the same sequence number goes on
    wal.sync()
    wal.close()
    assert [r[0] for r in WriteAheadLog(tmp_path, "always").open().records] == [1, 2, 3, 4]
