"""A worker's replica of the shared store (ZeroMQ guide: Clone pattern).

Pure: no sockets, time passed in. Updates carry the coordinator's epoch (one per
store history) and a sequence number. The replica applies them strictly in order:
an update just past its own sequence is applied, an old one ignored, one further
ahead held until the ones before it arrive. It never guesses: a heartbeat naming a
sequence it has not reached (an update was lost) or a new epoch (the coordinator
lost its history) mean "take a fresh snapshot".
"""

from __future__ import annotations

import threading
import time
from enum import Enum
from typing import Any

from cluster.errors import StateError

MAX_HELD = 10_000  # updates held out of order before we give up and re-sync


class Offer(Enum):
    APPLIED = "applied"
    STALE = "stale"
    HELD = "held"
    RESYNC = "resync"


class Replica:
    def __init__(self) -> None:
        self.data: dict[str, tuple[Any, float]] = {}
        self.seq = 0
        self.epoch: str | None = None
        self.held: dict[int, list[Any]] = {}

    @property
    def synced(self) -> bool:
        return self.epoch is not None

    def load(self, epoch: str, seq: int, entries: list[list[Any]]) -> None:
        self.data = {k: (v, exp) for k, v, exp in entries}
        self.epoch = epoch
        self.seq = seq
        held, self.held = self.held, {}
        for s in sorted(held):
            self.offer(epoch, s, held[s])

    def offer(self, epoch: str, seq: int, changes: list[Any]) -> Offer:
        if epoch != self.epoch:
            return Offer.RESYNC
        if seq <= self.seq:
            return Offer.STALE
        if seq > self.seq + 1:
            if len(self.held) >= MAX_HELD:
                return Offer.RESYNC
            self.held[seq] = changes
            return Offer.HELD
        self._apply(changes)
        self.seq = seq
        while self.seq + 1 in self.held:
            self._apply(self.held.pop(self.seq + 1))
            self.seq += 1
        return Offer.APPLIED

    def check(self, epoch: str, seq: int) -> bool:
        """A heartbeat from the coordinator; True means re-sync now."""
        # The heartbeat follows every update before it on the same ordered channel:
        # not having `seq` by now means one was lost. Being ahead is fine: our own
        # writes' acknowledgements may apply an update before the channel brings it.
        # Within an epoch the sequence never goes back (acks wait for the log).
        return epoch != self.epoch or seq > self.seq

    def _apply(self, changes: list[Any]) -> None:
        data = self.data
        for key, value, expires in changes:
            if value is None:
                data.pop(key, None)
            else:
                data[key] = (value, expires)

    def read(self, key: str, now: float) -> Any:
        entry = self.data.get(key)
        if entry is None or (entry[1] and entry[1] <= now):
            raise KeyError(key)
        return entry[0]

    def keys(self, now: float) -> list[str]:
        return [k for k, (_, exp) in self.data.items() if not exp or exp > now]


class ReplicaReads:
    """The read half of a state backend (cluster.state.Backend), served from the local
    replica; shared by the coordinator's client and the etcd one."""

    replica: Replica
    framework_keys: dict[str, Any]
    loop_thread: int

    def read(self, key: str) -> Any:
        return self.replica.read(key, time.time())

    def live_keys(self) -> list[str]:
        return self.replica.keys(time.time())

    def framework(self) -> dict[str, Any]:
        return self.framework_keys

    def refuse_on_loop(self) -> None:
        """A blocking write from the loop's own thread would wait for itself."""
        if threading.get_ident() == self.loop_thread:
            raise StateError("on the event loop, await the a-prefixed operations "
                             "(state.aincr, ...) instead")
