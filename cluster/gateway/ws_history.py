"""Numbered group messages at one gateway: delivery, and recovery at a reconnect.

A message published with history (`cluster.publish`) reaches every gateway from the
coordinator with its group's epoch and offset, and goes to each member of the group
as a JSON text frame `{"group", "epoch", "offset", "data"}`.

A connection that subscribes with the (epoch, offset) it last saw is recovered:
1. it joins the group at once, and live messages for it are held, not sent;
2. the coordinator is asked for the group's messages after that offset;
3. the answer is sent first, headed by `{"group", "epoch", "recovered": true}` (or
   `false`: the epoch changed or the offset is too old, nothing is sent for it),
4. then the held live messages, skipping the offsets the answer already gave,
5. then live delivery, which never sends an offset at or below one already sent.

So across the seam every message arrives once and in order. No answer within the
timeout counts as `recovered: false`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("cluster.gateway.ws")

Key = tuple[int, str]  # connection, group


@dataclass
class Recovery:
    since: int
    started: float
    held: list[tuple[int, str, Any]] = field(default_factory=list)  # offset, epoch, data


class FeedOutput(Protocol):
    """What the feed needs of the gateway's hub (`WebSocketHub` is it)."""

    def members_of(self, group: str) -> set[int]:
        """The group's connections here."""

    def queue_numbered(self, conn: int, text: str, group: str, event_id: str) -> None:
        """Queue a text frame for a connection; `event_id` is "epoch:offset" (an event
        stream's event id), or "" for a recovery's announcement."""


class HistorySource(Protocol):
    """Where a recovery's question goes: the coordinator (group_notices.py
    `CoordinatorDirectory`) or etcd (cluster/etcd/history.py `EtcdHistory`). The
    answer comes to `on_answer`."""

    def ask(self, rid: int, group: str, epoch: str, offset: int) -> bool:
        """False: it cannot be asked now (the recovery fails at once)."""


class NoHistory:
    """Until the gateway has a coordinator link or etcd: nothing can be recovered."""

    def ask(self, rid: int, group: str, epoch: str, offset: int) -> bool:
        return False


class GroupFeed:
    def __init__(self, output: FeedOutput, history: HistorySource, timeout: float) -> None:
        self.output = output
        self.history = history  # the gateway sets its own once it has one (start)
        self.timeout = timeout
        # Per connection (so a connection's end costs only its own entries): the newest
        # offset sent to it per group, and its recoveries under way.
        self.last: dict[int, dict[str, int]] = {}
        self.recovering: dict[int, dict[str, Recovery]] = {}
        self.queries: dict[int, Key] = {}
        self._rid = 0
        self.recovered = 0
        self.unrecoverable = 0

    def subscribe(self, conn: int, group: str, epoch: Any, offset: Any, now: float) -> None:
        """The connection (already joined to `group`) resumes after (epoch, offset)."""
        key = (conn, group)
        if not isinstance(epoch, str) or not isinstance(offset, int) or \
                isinstance(offset, bool) or offset < 0:
            self._announce(key, "", False)
            return
        self._rid += 1
        self.recovering.setdefault(conn, {})[group] = Recovery(offset, now)
        self.queries[self._rid] = key
        if not self.history.ask(self._rid, group, epoch, offset):
            self.queries.pop(self._rid, None)
            self._finish(key, "", [], False)

    def on_message(self, group: str, epoch: str, offset: int, data: Any) -> None:
        frame = None
        for conn in list(self.output.members_of(group)):
            recovery = self.recovering.get(conn, {}).get(group)
            if recovery is not None:
                recovery.held.append((offset, epoch, data))
                continue
            sent = self.last.setdefault(conn, {})
            if offset > sent.get(group, 0):
                frame = frame or _frame(group, epoch, offset, data)
                sent[group] = offset
                self.output.queue_numbered(conn, frame, group, f"{epoch}:{offset}")

    def on_answer(self, rid: int, epoch: str, messages: list[Any], complete: bool) -> None:
        key = self.queries.pop(rid, None)
        if key is None or key[1] not in self.recovering.get(key[0], {}):
            return  # its connection left, or it timed out
        self._finish(key, epoch, messages, complete)

    def check(self, conn: int, now: float) -> None:
        """A recovery with no answer in time: as if unrecoverable."""
        for group, recovery in list(self.recovering.get(conn, {}).items()):
            if now - recovery.started > self.timeout:
                log.warning("no history answer for connection %s, group %r, within %.0fs",
                            conn, group, self.timeout)
                self._finish((conn, group), "", [], False)

    def forget(self, conn: int) -> None:
        self.last.pop(conn, None)
        self.recovering.pop(conn, None)

    def _finish(self, key: Key, epoch: str, messages: list[Any], complete: bool) -> None:
        conn, group = key
        pending = self.recovering[conn]
        recovery = pending.pop(group)
        if not pending:
            del self.recovering[conn]
        self._announce(key, epoch, complete)
        last = recovery.since if complete else 0
        if complete:
            for item in messages:
                if isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) \
                        and item[0] > last:
                    last = item[0]
                    self.output.queue_numbered(conn, _frame(group, epoch, item[0], item[1]),
                                               group, f"{epoch}:{item[0]}")
        for offset, held_epoch, data in recovery.held:
            if offset > last:
                last = offset
                self.output.queue_numbered(conn, _frame(group, held_epoch, offset, data),
                                           group, f"{held_epoch}:{offset}")
        self.last.setdefault(conn, {})[group] = last

    def _announce(self, key: Key, epoch: str, complete: bool) -> None:
        if complete:
            self.recovered += 1
        else:
            self.unrecoverable += 1
        announcement = json.dumps({"group": key[1], "epoch": epoch, "recovered": complete},
                                  separators=(",", ":"))
        self.output.queue_numbered(key[0], announcement, key[1], "")


def _frame(group: str, epoch: str, offset: int, data: Any) -> str:
    return json.dumps({"group": group, "epoch": epoch, "offset": offset, "data": data},
                      separators=(",", ":"), default=str)
