"""Group history on disk: restored under the same epoch after a stop or a kill, a new
epoch when the file cannot be trusted (a machine that restarted, damage)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.coordinator.history import HistoryBook
from cluster.coordinator.history_log import HistoryLog
from cluster.coordinator.wal import HEADER
from tests.coordinator.full_disk import fill_the_disk


def book() -> HistoryBook:
    return HistoryBook(size=5, ttl=300)


def opened(path: Path, boot: str = "boot-1", **kw: object) -> tuple[HistoryLog, HistoryBook]:
    log = HistoryLog(path, "batch", boot=lambda: boot, **kw)  # type: ignore[arg-type]
    history = book()
    log.open(history, 1000.0)
    return log, history


def publish(log: HistoryLog, history: HistoryBook, group: str, data: str) -> int:
    offset = history.publish(group, data, 1000.0)
    log.append(group, offset, data)
    return offset


def killed(log: HistoryLog) -> None:
    """As a SIGKILL leaves it: what was written stays, nothing more is."""
    os.close(log.fd)
    log.fd = -1


def test_a_stop_and_a_start_keep_the_epoch_and_the_offsets(tmp_path: Path) -> None:
    log, history = opened(tmp_path)
    for i in range(3):
        publish(log, history, "room", f"m{i}")
    log.close()
    again, restored = opened(tmp_path)
    assert restored.epoch == history.epoch
    assert restored.since("room", history.epoch, 1, 1000.0) == ([[2, "m1"], [3, "m2"]], True)
    assert publish(again, restored, "room", "m3") == 4  # never an offset given before


def test_a_kill_keeps_every_message_written(tmp_path: Path) -> None:
    log, history = opened(tmp_path)
    for i in range(3):
        publish(log, history, "room", f"m{i}")
    killed(log)
    _, restored = opened(tmp_path)  # the same boot: the OS had every write
    assert restored.epoch == history.epoch and restored.position("room") == 3


def test_a_torn_last_write_was_never_sent_and_is_cut(tmp_path: Path) -> None:
    log, history = opened(tmp_path)
    publish(log, history, "room", "m0")
    publish(log, history, "room", "m1")
    killed(log)
    path = tmp_path / "history.log"
    path.write_bytes(path.read_bytes()[:-3])
    _, restored = opened(tmp_path)
    assert restored.epoch == history.epoch and restored.position("room") == 1


def test_a_machine_that_restarted_before_a_clean_stop_gets_a_new_epoch(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log, history = opened(tmp_path, boot="boot-1")
    publish(log, history, "room", "m0")
    killed(log)
    _, restored = opened(tmp_path, boot="boot-2")
    assert restored.epoch != history.epoch and restored.position("room") == 0
    assert "written before the machine restarted" in caplog.text
    assert restored.since("room", history.epoch, 1, 1000.0) == ([], False)


def test_a_clean_stop_survives_a_machine_restart(tmp_path: Path) -> None:
    log, history = opened(tmp_path, boot="boot-1")
    publish(log, history, "room", "m0")
    log.close()
    _, restored = opened(tmp_path, boot="boot-2")
    assert restored.epoch == history.epoch and restored.position("room") == 1


def test_damage_in_the_middle_means_a_new_epoch(tmp_path: Path) -> None:
    log, history = opened(tmp_path)
    for i in range(4):
        publish(log, history, "room", f"m{i}")
    log.close()
    path = tmp_path / "history.log"
    data = bytearray(path.read_bytes())
    epoch_end = HEADER.size + HEADER.unpack_from(data, 0)[0]
    group_end = epoch_end + HEADER.size + HEADER.unpack_from(data, epoch_end)[0]
    data[group_end + HEADER.size + 2] ^= 0xFF  # inside the first message
    path.write_bytes(bytes(data))
    _, restored = opened(tmp_path)
    assert restored.epoch != history.epoch and restored.position("room") == 0


def test_compaction_keeps_the_kept_and_where_each_group_stands(tmp_path: Path) -> None:
    log, history = opened(tmp_path, compact_after=8)
    for i in range(20):  # 5 kept (size 5): compacted twice on the way
        publish(log, history, "room", f"m{i}")
        if log.due():
            log.compact(history, 1000.0)
    log.close()
    assert (tmp_path / "history.log").stat().st_size < 2000
    _, restored = opened(tmp_path)
    assert restored.position("room") == 20
    assert restored.since("room", history.epoch, 15, 1000.0) == (
        [[i + 1, f"m{i}"] for i in range(15, 20)], True)
    assert restored.since("room", history.epoch, 3, 1000.0) == ([], False)  # gone


def test_the_file_is_private(tmp_path: Path) -> None:
    log, _ = opened(tmp_path / "data")
    log.close()
    assert (tmp_path / "data" / "history.log").stat().st_mode & 0o777 == 0o600


def test_a_publish_the_disk_refuses_is_taken_back_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.coordinator import history_log as module
    log, history = opened(tmp_path)
    publish(log, history, "room", "m0")
    size = (tmp_path / "history.log").stat().st_size
    fill_the_disk(monkeypatch, module)  # mid-record
    offset = history.publish("room", "m1", 1000.0)
    with pytest.raises(OSError):
        log.append("room", offset, "m1")
    history.withdraw("room")
    monkeypatch.undo()
    assert (tmp_path / "history.log").stat().st_size == size  # no torn record left
    assert publish(log, history, "room", "m2") == 2  # the offset no client saw, again
    log.close()
    _, restored = opened(tmp_path)
    assert restored.since("room", history.epoch, 0, 1000.0) == ([[1, "m0"], [2, "m2"]], True)
