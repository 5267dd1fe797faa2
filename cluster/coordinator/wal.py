"""The coordinator's durable state: a write-ahead log and snapshots in `--data-dir`.

Theory of operation
-------------------
`state.log` is a sequence of records, each `length (u32 LE) | crc32 (u32 LE) |
payload`, the payload a msgpack `[seq, changes]`. Records are buffered during a loop
pass and written with one `write` (`flush`) before any of them is acknowledged, so
a killed process loses no acknowledged change. `fsync` (`sync`) is the caller's
policy: with `--fsync always` once per loop pass before the acks (group commit, as
Redis's appendfsync always), with `--fsync batch` every `--fsync-interval`.

`state.snapshot` holds the whole store at a sequence number (one record in the same
framing). Writing one: to `state.snapshot.tmp`, fsync, rename over the old one,
fsync the directory, then empty the log. A crash anywhere in between is safe: on
start, records at or below the snapshot's sequence are skipped.

On start the log is read record by record. Damage at its end (a record cut short, or
one whose checksum fails with nothing whole after it) is a torn write at a crash: what
was being written was never acknowledged, so the file is cut there with one log line.
Damage with whole records after it is corruption of acknowledged writes: the start
is refused (`StateLogDamaged`), naming the file, the offset and `cluster repair`, which
cuts the log at the damage and says how many records that drops. A record whose
checksum holds but whose content is not `[seq, changes]` is corruption too, wherever
it stands. So no acknowledged write is ever dropped without someone deciding it.

The directory is 0700 and its files 0600: the shared state is the application's data.

A write that fails (the disk is full, an I/O error) raises to the caller, after the
file is cut back to the records written before it (`written`): what was never
acknowledged leaves no torn tail behind. `reread()` then gives the caller the
state the files hold, to rebuild from.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]

from cluster.errors import StateLogDamaged

log = logging.getLogger("cluster.coordinator.wal")

HEADER = struct.Struct("<II")
MAX_RECORD = 1 << 30
FSYNC_MODES = ("always", "batch")


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


DIR_MODE = 0o700
FILE_MODE = 0o600
# msgpack's first byte of a short array: every record's payload begins with one.
_SHORT_ARRAY = re.compile(b"[\x90-\x9f]")
Shape = Callable[[Any], bool]


@dataclass(frozen=True)
class Damage:
    offset: int  # where the first bad record begins
    reason: str
    later: int  # whole records found after it (0 and not `checksummed`: a torn tail)
    checksummed: bool  # the record's checksum held: its content is wrong, not torn

    @property
    def torn_tail(self) -> bool:
        return not self.later and not self.checksummed


def _well_formed(record: Any) -> bool:
    """`[seq, changes]`, each change `[key, value, expires_at]`."""
    if not (isinstance(record, list) and len(record) == 2 and type(record[0]) is int
            and isinstance(record[1], list)):
        return False
    return all(isinstance(c, list) and len(c) == 3 and isinstance(c[0], str)
               and type(c[2]) in (int, float) for c in record[1])


@dataclass(frozen=True, slots=True)
class _Bad:
    reason: str
    checksummed: bool  # the checksum held: the content is wrong, not torn


def _record_at(data: bytes, pos: int, shape: Shape) -> tuple[Any, int] | _Bad:
    """The record at `pos` and where it ends; or why there is none there."""
    if pos + HEADER.size > len(data):
        return _Bad("a record header cut short", False)
    length, crc = HEADER.unpack_from(data, pos)
    start = pos + HEADER.size
    end = start + length
    if length > MAX_RECORD or end > len(data):
        return _Bad("a record longer than what follows it", False)
    payload = data[start:end]
    if zlib.crc32(payload) != crc:
        return _Bad("a checksum that does not match", False)
    try:
        record = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception:  # msgpack raises several kinds for garbage
        return _Bad("a checksummed record that is not msgpack", True)
    if not shape(record):
        return _Bad("a checksummed record of the wrong shape"
                    + (" (not [seq, changes])" if shape is _well_formed else ""), True)
    return record, end


def _records_after(data: bytes, pos: int, shape: Shape) -> int:
    """How many whole records stand after damage at `pos`: found by looking for the
    next place a well-formed, checksummed record begins, then reading on from it."""
    for candidate in _SHORT_ARRAY.finditer(data, pos + 1 + HEADER.size):
        here = candidate.start() - HEADER.size
        if isinstance(_record_at(data, here, shape), _Bad):
            continue
        count = 0
        while here < len(data):
            step = _record_at(data, here, shape)
            if isinstance(step, _Bad):
                break
            count, here = count + 1, step[1]
        return count
    return 0


def scan(data: bytes, shape: Shape = _well_formed) -> tuple[list[Any], int, Damage | None]:
    """The whole records from the start of `data`, the length they take, and the
    damage that stopped the reading, if any. `shape` says what a record must be."""
    records: list[Any] = []
    pos = 0
    while pos < len(data):
        found = _record_at(data, pos, shape)
        if isinstance(found, _Bad):
            return records, pos, Damage(pos, found.reason, _records_after(data, pos, shape),
                                        found.checksummed)
        records.append(found[0])
        pos = found[1]
    return records, pos, None


def repair(directory: Path) -> tuple[int, Damage | None]:
    """`cluster repair`: cut the state log at its first damage. Returns the records
    kept and the damage cut (None: the log was whole). The epoch file goes too, so
    the next start begins a new history and every replica re-syncs."""
    path = directory / "state.log"
    data = path.read_bytes() if path.exists() else b""
    records, good, damage = scan(data)
    if damage is not None:
        with open(path, "r+b") as f:
            f.truncate(good)
            os.fsync(f.fileno())
        (directory / "epoch").unlink(missing_ok=True)
    return len(records), damage


def write_atomically(path: Path, data: bytes) -> None:
    """`path` holds `data` whole or not at all, across a crash too: written beside it,
    fsynced, renamed over it, and the rename made durable (the directory fsynced)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            view = memoryview(data)
            while view:  # a short write is possible when the disk is nearly full
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def make_private(directory: Path) -> None:
    """The data directory 0700 and what is in it 0600, made or mended."""
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o777 != DIR_MODE:
        log.warning("%s was mode %o; now %o", directory, directory.stat().st_mode & 0o777,
                    DIR_MODE)
        directory.chmod(DIR_MODE)
    for path in directory.iterdir():
        if path.is_file() and path.stat().st_mode & 0o077:
            path.chmod(FILE_MODE)


@dataclass
class Recovered:
    seq: int = 0
    entries: list[list[Any]] = field(default_factory=list)  # from the snapshot
    records: list[list[Any]] = field(default_factory=list)  # [seq, changes] after it
    cut_bytes: int = 0


class WriteAheadLog:
    def __init__(self, directory: Path, fsync: str) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {FSYNC_MODES}")
        self.directory = directory
        self.fsync_mode = fsync
        self.log_path = directory / "state.log"
        self.snapshot_path = directory / "state.snapshot"
        self.fd = -1
        self.bytes = 0
        self.written = 0  # bytes of whole records in the file (the log's good length)
        self.records_since_snapshot = 0
        self.unsynced = False
        self._buffer = bytearray()
        self._buffered = 0  # records in _buffer
        self.observe_fsync: Callable[[float], None] | None = None  # seconds per log fsync

    def open(self) -> Recovered:
        make_private(self.directory)
        recovered = self.reread()
        self.fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        self.bytes = self.written
        self.records_since_snapshot = len(recovered.records)
        return recovered

    def reread(self) -> Recovered:
        """The snapshot and the good records after it, as the files hold them; a
        damaged tail is cut off."""
        recovered = Recovered()
        if self.snapshot_path.exists():
            snaps, _, damage = scan(self.snapshot_path.read_bytes())
            if damage is not None or len(snaps) != 1 or \
                    not all(isinstance(e, list) and len(e) == 3 for e in snaps[0][1]):
                why = damage.reason if damage is not None else "not one snapshot record"
                raise StateLogDamaged(
                    f"{self.snapshot_path} is damaged ({why}); refusing to start without it: "
                    "restore the data directory from a backup")
            recovered.seq, recovered.entries = snaps[0][0], snaps[0][1]
        data = self.log_path.read_bytes() if self.log_path.exists() else b""
        records, good, damage = scan(data)
        if damage is not None and not damage.torn_tail:
            raise StateLogDamaged(
                f"{self.log_path} is damaged at byte {damage.offset} of {len(data)} "
                f"({damage.reason}; {len(records)} good records before it, {damage.later} "
                f"after it); refusing to start rather than drop acknowledged writes. To cut "
                f"the log there, losing the records from that offset on: cluster repair "
                f"--data-dir {self.directory}")
        if damage is not None:
            recovered.cut_bytes = len(data) - good
            log.warning("state log: cut a torn tail of %d bytes at offset %d "
                        "(%d good records kept)", len(data) - good, good, len(records))
            with open(self.log_path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        recovered.records = [r for r in records if r[0] > recovered.seq]
        self.written = good
        return recovered

    def append(self, seq: int, changes: list[Any]) -> None:
        data = frame(msgpack.packb([seq, changes], use_bin_type=True))
        self._buffer += data
        self._buffered += 1
        self.bytes += len(data)
        self.records_since_snapshot += 1

    def flush(self) -> None:
        """Hand the buffered records to the OS: from here a process crash loses none.
        On OSError (ENOSPC, EIO) the buffered records are dropped and the file cut back
        to the last whole record, then the error is raised."""
        if self._buffer:
            data = bytes(self._buffer)
            written = 0
            try:
                while written < len(data):  # a short write is possible when nearly full
                    written += os.write(self.fd, data[written:])
            except OSError:
                self.discard()
                raise
            self._buffer = bytearray()
            self._buffered = 0
            self.written += len(data)
            self.unsynced = True

    def discard(self) -> None:
        """Forget buffered records and cut any partial write off the file."""
        self.records_since_snapshot -= self._buffered
        self._buffer = bytearray()
        self._buffered = 0
        try:
            os.ftruncate(self.fd, self.written)
        except OSError as exc:  # the next open cuts the torn tail anyway
            log.error("state log: cannot cut back to %d bytes: %s", self.written, exc)
        self.bytes = self.written

    def sync(self) -> None:
        """One fsync for every record written since the last one (group commit)."""
        self.flush()
        if self.unsynced:
            began = time.perf_counter()
            os.fsync(self.fd)
            self.unsynced = False
            if self.observe_fsync is not None:
                self.observe_fsync(time.perf_counter() - began)

    def snapshot(self, seq: int, entries: list[list[Any]]) -> None:
        self.sync()
        # On failure the old snapshot and the log stand: nothing is lost.
        write_atomically(self.snapshot_path,
                         frame(msgpack.packb([seq, entries], use_bin_type=True)))
        os.ftruncate(self.fd, 0)
        os.fsync(self.fd)
        self.bytes = self.written = 0
        self.records_since_snapshot = 0
        log.info("snapshot at seq %d (%d keys); log compacted", seq, len(entries))

    def close(self) -> None:
        if self.fd >= 0:
            self.sync()
            os.close(self.fd)
            self.fd = -1
