"""The coordinator's half of shared state: apply, log, acknowledge, publish.

Operations arrive on the coordinator's ROUTER (STATE_OP) and are applied at once to
the store, in arrival order, and their log records buffered. At the end of the loop
pass one commit step writes the records to the log (and with `--fsync always`
fsyncs them: group commit), then, in sequence order, publishes the updates on the
PUB socket as one frame and sends the acknowledgements. Nobody, reader or writer,
sees a change before it is in the log. With `--fsync batch` an fsync follows within
`--fsync-interval`. A heartbeat with the current sequence goes out on the PUB every
interval, so a replica that lost an update notices.

When the log cannot be written (the disk is full, an I/O error), the pass's writes
are refused as unavailable (the worker answers 503 with Retry-After), the store is
rebuilt from what the files hold (nobody saw those writes: updates go out only
after the log has them), and further writes are refused at once, without touching
the store, until the disk has room again (checked every interval). Reads go on:
they are served from the replicas.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

from cluster.coordinator.store import StateStore, StoreLimits
from cluster.coordinator.wal import FILE_MODE, Recovered, WriteAheadLog
from cluster.errors import StateError
from cluster.plumbing import wire
from cluster.plumbing.config import CoordinatorConfig
from cluster.plumbing.security import Plaintext, Security
from cluster.plumbing.zmqio import advertised, bind

log = logging.getLogger("cluster.coordinator.state")

SNAPSHOT_CHUNK = 2000  # entries per SNAPSHOT frame
MIN_FREE = 1024 * 1024  # bytes free on the data directory's disk to try writing again


def _unavailable(rid: int) -> dict[str, Any]:
    return wire.envelope(wire.STATE_ACK, rid=rid, ok=False, unavailable=True,
                         error="the coordinator cannot write its log (disk full?)")


class StateService:
    def __init__(self, config: CoordinatorConfig, zmq_context: zmq.Context[zmq.Socket[bytes]],
                 loop: asyncio.AbstractEventLoop,
                 reply: Any, pub_host: str, security: Security | None = None) -> None:
        self.config = config
        self.loop = loop
        self.reply = reply  # (peer, envelope) -> None, through the coordinator's ROUTER
        self.store = StateStore(StoreLimits.of(config))
        self.wal: WriteAheadLog | None = None
        self.epoch = uuid.uuid4().hex
        if config.data_dir:
            self.wal = WriteAheadLog(Path(config.data_dir), config.fsync)
            self._recover(Path(config.data_dir))
        else:
            log.warning("no --data-dir: shared state lives in memory and dies with this process")
        self.pub = zmq_context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        # Only members may read the state: the PUB is a CURVE server like the ROUTER.
        (security or Plaintext()).server(self.pub)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        bind(self.pub, config.state_bind or f"{pub_host}:0", "--state-bind")
        self.pub_endpoint = advertised(self.pub.getsockopt_string(zmq.LAST_ENDPOINT),
                                       config.advertise_host)
        # (peer or None for our own expiries, rid, results, seq or 0, changes)
        self._pending: list[tuple[bytes | None, int, list[Any], int, list[Any]]] = []
        self._commit_scheduled = False
        self._fsync_scheduled = False
        self.ops_total = 0
        self.writable = True  # False while the log cannot be written
        self.refused_unwritable = 0

    def _recover(self, directory: Path) -> None:
        assert self.wal is not None
        epoch_file = directory / "epoch"
        recovered = self.wal.open()  # makes the directory, private
        if epoch_file.exists() and not recovered.cut_bytes:
            self.epoch = epoch_file.read_text().strip()
        else:
            # A first start, or a log that lost its torn tail (or was repaired): a new
            # history. Replicas that saw the lost records notice the new epoch and re-sync.
            fd = os.open(epoch_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with open(fd, "w") as f:
                f.write(self.epoch)
        self._load(recovered)
        log.info("state recovered: %d keys at seq %d (snapshot seq %d + %d log records)",
                 len(self.store.data), self.store.seq, recovered.seq, len(recovered.records))

    def _load(self, recovered: Recovered) -> None:
        self.store.commit(recovered.entries)
        self.store.seq = recovered.seq
        for seq, changes in recovered.records:
            self.store.commit(changes)
            self.store.seq = seq

    # -- requests ------------------------------------------------------------------
    def on_op(self, peer: bytes, msg: dict[str, Any]) -> None:
        rid = msg["rid"]
        if not self.writable:
            self.refused_unwritable += 1
            self.reply(peer, _unavailable(rid))
            return
        try:
            results, changes = self.store.apply(msg["ops"], time.time())
        except StateError as exc:
            self.reply(peer, wire.envelope(wire.STATE_ACK, rid=rid, ok=False, error=str(exc)))
            return
        self.ops_total += len(msg["ops"])
        seq = self.store.seq
        if changes and self.wal is not None:
            self.wal.append(seq, changes)
        self._pending.append((peer, rid, results, seq if changes else 0, changes))
        if not self._commit_scheduled:
            self._commit_scheduled = True
            self.loop.call_soon(self.commit)

    def commit(self) -> None:
        """The loop pass's records into the log, then updates and acks, in order."""
        self._commit_scheduled = False
        wal = self.wal
        if wal is not None:
            try:
                if self.config.fsync == "always":
                    wal.sync()
                else:
                    wal.flush()
            except OSError as exc:
                self._log_failed(exc)
                return
            if wal.unsynced and not self._fsync_scheduled:
                self._fsync_scheduled = True
                self.loop.call_later(self.config.fsync_interval, self._fsync)
        pending, self._pending = self._pending, []
        updates = [wire.envelope(wire.UPDATE, epoch=self.epoch, seq=seq, changes=changes)
                   for _, _, _, seq, changes in pending if changes]
        if updates:
            self.pub.send(wire.encode(updates))
        for peer, rid, results, seq, changes in pending:
            if peer is not None:
                self.reply(peer, wire.envelope(wire.STATE_ACK, rid=rid, ok=True, results=results,
                                           seq=seq, changes=changes, epoch=self.epoch))
        if self.wal is not None and self.wal.records_since_snapshot >= \
                self.config.snapshot_every:
            try:
                self.wal.snapshot(self.store.seq, self.store.entries())
            except OSError as exc:  # the log still holds everything: nothing is lost
                log.error("state snapshot failed: %s; writes refused until %s has room",
                          exc, self.config.data_dir)
                self.writable = False

    def _log_failed(self, exc: OSError) -> None:
        """The pass's records could not be written: refuse them, and rebuild the store
        from the files (the refused writes were applied to it, seen by nobody)."""
        assert self.wal is not None
        pending, self._pending = self._pending, []
        log.error("state log write failed: %s; %d writes refused (503), and all writes "
                  "until %s has room", exc, len(pending), self.config.data_dir)
        self.writable = False
        for peer, rid, _results, _seq, _changes in pending:
            if peer is not None:
                self.refused_unwritable += 1
                self.reply(peer, _unavailable(rid))
        recovered = self.wal.reread()
        self.store = StateStore(self.store.limits)
        self._load(recovered)

    def _check_writable(self) -> None:
        """Room again on the disk: accept writes (the next failure refuses them again)."""
        assert self.wal is not None
        try:
            stat = os.statvfs(self.wal.directory)
        except OSError:
            return
        if stat.f_bavail * stat.f_frsize >= MIN_FREE:
            log.info("%s has room again; accepting writes", self.config.data_dir)
            self.writable = True

    def _fsync(self) -> None:
        self._fsync_scheduled = False
        if self.wal is not None:
            try:
                self.wal.sync()
            except OSError as exc:
                # Written before it was acknowledged (--fsync batch): a process crash
                # loses none of it; the machine's crash may. Refuse more until it works.
                log.error("state log fsync failed: %s; writes refused until it succeeds",
                          exc)
                self.writable = False

    def on_snapshot_request(self, peer: bytes, msg: dict[str, Any]) -> None:
        entries = self.store.entries()
        seq = self.store.seq
        chunks = [entries[i:i + SNAPSHOT_CHUNK]
                  for i in range(0, len(entries), SNAPSHOT_CHUNK)] or [[]]
        for i, chunk in enumerate(chunks):
            self.reply(peer, wire.envelope(wire.SNAPSHOT, rid=msg["rid"], epoch=self.epoch,
                                           seq=seq, entries=chunk, last=i == len(chunks) - 1))

    # -- time ------------------------------------------------------------------------
    def tick(self) -> None:
        """Every interval: expire keys, then tell replicas where the sequence is."""
        if not self.writable:
            self._check_writable()
        # Expiring is a write too; while refused, replicas hide expired keys anyway.
        gone = self.store.expire(time.time()) if self.writable else []
        if gone:
            if self.wal is not None:
                self.wal.append(self.store.seq, gone)
            self._pending.append((None, 0, [], self.store.seq, gone))
        self.commit()  # in order with any writes of this pass, before the heartbeat
        self.pub.send(wire.encode_one(wire.STATE_HEARTBEAT, epoch=self.epoch,
                                      seq=self.store.seq))

    def readiness(self) -> dict[str, Any]:
        return {"log_open": self.wal is None or self.wal.fd >= 0, "writable": self.writable}

    def info(self) -> dict[str, Any]:
        return {"pub": self.pub_endpoint, "epoch": self.epoch}

    def close(self) -> None:
        self.commit()
        if self.wal is not None:
            self.wal.close()
        self.pub.close(linger=0)
