"""Group history on disk (`--data-dir`): `history.log`, beside the state log.

Theory of operation
-------------------
Records are framed as the state log's are (`length | crc32 | msgpack`). The first
record of a file names the epoch and the boot it was written in, `["epoch", EPOCH,
BOOT_ID]`; every publish is `["m", group, offset, wall_time, data]`; a rewritten
file also says where each group stands, `["g", group, last_offset]`, so offsets go on
from there even when no message of the group is kept any more; a coordinator that
stops in order ends the file with `["closed"]`.

A publish is handed to the OS (one `write`) before it goes to any gateway, so a
coordinator that is killed has on disk every message a client could have seen: it
comes back under the same epoch, with the same offsets, and recovery is exact. The
file is fsynced every `--fsync-interval` (batch) or at every publish (always). After
a machine crash with batch, the last interval of messages may be gone although
clients saw them; offsets would then be given twice. That case is told apart by the
boot id (the file did not end `closed`, and it was written in another boot): the
history starts again under a new epoch, so recovering clients are told `recovered:
false` instead of being given a wrong sequence. Damage anywhere but a torn tail does
the same: history is a convenience for reconnecting clients, never acknowledged
state, and a new epoch is the honest answer.

The file is rewritten with only what is kept (`compact`) once it holds `compact_after`
records: kept messages are at most `--history-size` per group anyway.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]

from cluster.coordinator.history import HistoryBook
from cluster.coordinator.wal import frame, make_private, scan, write_atomically

log = logging.getLogger("cluster.coordinator.history")

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:  # not Linux: every start counts as a new boot after a crash
        return ""


def _is_record(record: Any) -> bool:
    if not isinstance(record, list) or not record:
        return False
    kind = record[0]
    if kind == "m":
        return (len(record) == 5 and isinstance(record[1], str) and type(record[2]) is int
                and type(record[3]) in (int, float))
    if kind == "g":
        return len(record) == 3 and isinstance(record[1], str) and type(record[2]) is int
    if kind == "epoch":
        return len(record) == 3 and isinstance(record[1], str) and isinstance(record[2], str)
    return kind == "closed" and len(record) == 1


class HistoryLog:
    def __init__(self, directory: Path, fsync: str, compact_after: int = 10_000,
                 boot: Callable[[], str] = boot_id) -> None:
        self.directory = directory
        self.path = directory / "history.log"
        self.always = fsync == "always"
        self.compact_after = compact_after
        self.boot = boot
        self.fd = -1
        self.records = 0
        self.unsynced = False
        self.refused = 0  # publishes dropped because they could not be written
        self.size = 0  # bytes in the file

    def open(self, book: HistoryBook, now: float) -> None:
        """Fill `book` from the file (its epoch too, when it can be trusted), then
        start a file that holds what is kept."""
        make_private(self.directory)
        data = self.path.read_bytes() if self.path.exists() else b""
        records, _, damage = scan(data, _is_record)
        trusted = bool(records) and records[0][0] == "epoch"
        why = ""
        if damage is not None and not damage.torn_tail:
            trusted, why = False, f"damaged at byte {damage.offset} ({damage.reason})"
        elif trusted and records[-1] != ["closed"] and records[0][2] != self.boot():
            trusted, why = False, "not closed, and written before the machine restarted " \
                                  "(its last messages may not have reached the disk)"
        if trusted:
            wall = time.time()
            book.epoch = records[0][1]
            for record in records[1:]:
                if record[0] == "m":
                    _, group, offset, at, message = record
                    book.restore(group, offset, now - (wall - at), message)
                elif record[0] == "g":
                    book.restore(record[1], record[2])
            log.info("history: epoch %s restored, %d groups", book.epoch, len(book.groups))
        elif why:
            log.warning("history: %s; starting a new epoch %s (recovering clients are told "
                        "recovered: false)", why, book.epoch)
        self._rewrite(book, now)

    def append(self, group: str, offset: int, data: Any) -> None:
        """One publish, written before it is sent anywhere; OSError (a full disk) leaves
        no part of it in the file."""
        record = frame(msgpack.packb(["m", group, offset, time.time(), data],
                                     use_bin_type=True))
        size = self.size
        try:
            self._write(record)
        except OSError:
            os.ftruncate(self.fd, size)
            self.size = size
            raise
        self.records += 1
        if self.always:
            self.sync()

    def sync(self) -> None:
        if self.unsynced and self.fd >= 0:
            os.fsync(self.fd)
            self.unsynced = False

    def due(self) -> bool:
        return self.records >= self.compact_after

    def compact(self, book: HistoryBook, now: float) -> None:
        self._rewrite(book, now)

    def close(self) -> None:
        if self.fd >= 0:
            self._write(frame(msgpack.packb(["closed"])))
            self.unsynced = True
            self.sync()
            os.close(self.fd)
            self.fd = -1

    def _write(self, data: bytes) -> None:
        written = 0
        try:
            while written < len(data):
                written += os.write(self.fd, data[written:])
        finally:
            self.size += written
            self.unsynced = True

    def _rewrite(self, book: HistoryBook, now: float) -> None:
        """A new file with the epoch and what the book keeps, put in place atomically.
        `now` is the book's clock (monotonic); the file holds wall-clock times."""
        parts = [frame(msgpack.packb(["epoch", book.epoch, self.boot()]))]
        wall = time.time()
        for group, history in book.groups.items():
            parts.append(frame(msgpack.packb(["g", group, history.last])))
            for offset, at, message in history.messages:
                parts.append(frame(msgpack.packb(["m", group, offset, wall - (now - at),
                                                  message], use_bin_type=True)))
        data = b"".join(parts)
        write_atomically(self.path, data)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.size = len(data)
        self.records = 0
        self.unsynced = False
