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

On start the log is read until the first record whose length or checksum is wrong;
the file is cut there (a torn write at a crash, or damage), with one log line
saying how many bytes were dropped. Everything before the damage is kept.

A write that fails (the disk is full, an I/O error) raises to the caller, after the
file is cut back to the records written before it (`written`): what was never
acknowledged leaves no torn tail behind. `reread()` then gives the caller the
state the files hold, to rebuild from.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]

log = logging.getLogger("cluster.coordinator.wal")

HEADER = struct.Struct("<II")
MAX_RECORD = 1 << 30
FSYNC_MODES = ("always", "batch")


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(data: bytes) -> tuple[list[Any], int]:
    """Decode records from the start of `data`; return them and the good length."""
    records: list[Any] = []
    pos = 0
    while pos + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, pos)
        start = pos + HEADER.size
        end = start + length
        if length > MAX_RECORD or end > len(data):
            break
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            break
        try:
            records.append(msgpack.unpackb(payload, raw=False, strict_map_key=False))
        except Exception:  # a checksum collision on garbage: treat as damage
            break
        pos = end
    return records, pos


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
        self.directory.mkdir(parents=True, exist_ok=True)
        recovered = self.reread()
        self.fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.bytes = self.written
        self.records_since_snapshot = len(recovered.records)
        return recovered

    def reread(self) -> Recovered:
        """The snapshot and the good records after it, as the files hold them; a
        damaged tail is cut off."""
        recovered = Recovered()
        if self.snapshot_path.exists():
            snaps, good = read_records(self.snapshot_path.read_bytes())
            if not snaps:
                raise OSError(f"{self.snapshot_path} is damaged; refusing to start without it")
            recovered.seq, recovered.entries = snaps[0][0], snaps[0][1]
        data = self.log_path.read_bytes() if self.log_path.exists() else b""
        records, good = read_records(data)
        if good < len(data):
            recovered.cut_bytes = len(data) - good
            log.warning("state log: cut %d damaged or torn bytes at offset %d "
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
        tmp = self.snapshot_path.with_suffix(".snapshot.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(frame(msgpack.packb([seq, entries], use_bin_type=True)))
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)  # the old snapshot and the log stand
            raise
        os.replace(tmp, self.snapshot_path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
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
