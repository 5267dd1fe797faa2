"""The coordinator's write-ahead log and snapshots, byte for byte."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest

from cluster.coordinator.wal import HEADER, WriteAheadLog, frame, repair
from cluster.errors import StateLogDamaged
from tests.coordinator.full_disk import fill_the_disk


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


def flip(path: Path, record: int, at: int = 2) -> int:
    """Flip one byte inside the payload of record number `record` (from 0); its offset."""
    data = bytearray(path.read_bytes())
    size = HEADER.size + HEADER.unpack_from(data, 0)[0]  # records here are all one size
    data[size * record + HEADER.size + at] ^= 0xFF
    path.write_bytes(bytes(data))
    return size * record


def test_a_flipped_byte_mid_log_refuses_the_start_and_names_the_repair(
        tmp_path: Path) -> None:
    fill(tmp_path, 5).close()
    log_path = tmp_path / "state.log"
    size = log_path.stat().st_size
    offset = flip(log_path, 2)
    with pytest.raises(StateLogDamaged) as refused:
        WriteAheadLog(tmp_path, "batch").open()
    text = str(refused.value)
    assert f"{log_path} is damaged at byte {offset} of {size}" in text
    assert "2 good records before it, 2 after it" in text
    assert f"cluster repair --data-dir {tmp_path}" in text
    assert log_path.stat().st_size == size  # nothing cut without someone deciding it


def test_repair_cuts_at_the_damage_and_counts_what_it_drops(tmp_path: Path) -> None:
    fill(tmp_path, 5).close()
    (tmp_path / "epoch").write_text("old")
    offset = flip(tmp_path / "state.log", 2)
    kept, damage = repair(tmp_path)
    assert kept == 2 and damage is not None and (damage.offset, damage.later) == (offset, 2)
    assert not (tmp_path / "epoch").exists()  # a new history: replicas re-sync
    rec = WriteAheadLog(tmp_path, "batch").open()
    assert [r[0] for r in rec.records] == [1, 2] and rec.cut_bytes == 0
    assert repair(tmp_path) == (2, None)


def test_a_flipped_byte_in_the_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    fill(tmp_path, 5).close()
    flip(tmp_path / "state.log", 4)
    rec = WriteAheadLog(tmp_path, "batch").open()
    assert [r[0] for r in rec.records] == [1, 2, 3, 4] and rec.cut_bytes > 0


@pytest.mark.parametrize("payload", [[1, 2], [1], "x", [1, [["k", 1]]], [True, []],
                                     [1, [[1, 2, 0]]]])
def test_a_checksummed_record_of_the_wrong_shape_is_damage(tmp_path: Path,
                                                           payload: object) -> None:
    fill(tmp_path, 2).close()
    log_path = tmp_path / "state.log"
    with open(log_path, "ab") as f:  # last in the file: still no torn tail
        f.write(frame(msgpack.packb(payload)))
    with pytest.raises(StateLogDamaged, match="not \\[seq, changes\\]"):
        WriteAheadLog(tmp_path, "batch").open()


def test_the_data_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "stale").write_bytes(b"")
    os.chmod(data / "stale", 0o644)
    wal = fill(data, 3)
    wal.snapshot(3, [["k", 1, 0]])
    wal.close()
    assert data.stat().st_mode & 0o777 == 0o700
    for path in data.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path


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
    with pytest.raises(StateLogDamaged, match="damaged"):
        WriteAheadLog(tmp_path, "batch").open()


def test_record_framing_is_length_and_crc(tmp_path: Path) -> None:
    fill(tmp_path, 1).close()
    data = (tmp_path / "state.log").read_bytes()
    length, crc = HEADER.unpack_from(data, 0)
    assert length == len(data) - HEADER.size and crc == zlib.crc32(data[HEADER.size:])
    assert os.path.getsize(tmp_path / "state.log") == len(data)


def test_a_failed_write_leaves_no_torn_record_and_the_log_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.coordinator import wal as wal_module
    wal = fill(tmp_path, 3)
    good = wal.log_path.stat().st_size
    fill_the_disk(monkeypatch, wal_module)  # mid-record
    wal.append(4, [["big", "x" * 100, 0]])
    with pytest.raises(OSError):
        wal.flush()
    monkeypatch.undo()
    assert wal.log_path.stat().st_size == good == wal.written
    assert [r[0] for r in wal.reread().records] == [1, 2, 3]
    wal.append(4, [["k4", 4, 0]])  # room again: the same sequence number goes on
    wal.sync()
    wal.close()
    assert [r[0] for r in WriteAheadLog(tmp_path, "always").open().records] == [1, 2, 3, 4]
