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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("cluster.gateway.ws")

Key = tuple[int, str]  # connection, group


@dataclass
class Recovery:
    since: int
    started: float
    held: list[tuple[int, str, Any]] = field(default_factory=list)  # offset, epoch, data


class GroupFeed:
    def __init__(self, send: Callable[[int, str, str, str], None],
                 members: Callable[[str], set[int]],
                 ask: Callable[[int, str, str, int], bool], timeout: float) -> None:
        # (conn, text, group, "epoch:offset" or "" for an announcement): queue a text
        # frame for a connection (an event stream's event id is its epoch:offset)
        self.send = send
        self.members = members  # group -> connections here
        self.ask = ask  # (rid, group, epoch, offset) -> asked the coordinator?
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
        if not self.ask(self._rid, group, epoch, offset):
            self.queries.pop(self._rid, None)
            self._finish(key, "", [], False)

    def on_message(self, group: str, epoch: str, offset: int, data: Any) -> None:
        frame = None
        for conn in list(self.members(group)):
            recovery = self.recovering.get(conn, {}).get(group)
            if recovery is not None:
                recovery.held.append((offset, epoch, data))
                continue
            sent = self.last.setdefault(conn, {})
            if offset > sent.get(group, 0):
                frame = frame or _frame(group, epoch, offset, data)
                sent[group] = offset
                self.send(conn, frame, group, f"{epoch}:{offset}")

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
                    self.send(conn, _frame(group, epoch, item[0], item[1]), group,
                              f"{epoch}:{item[0]}")
        for offset, held_epoch, data in recovery.held:
            if offset > last:
                last = offset
                self.send(conn, _frame(group, held_epoch, offset, data), group,
                          f"{held_epoch}:{offset}")
        self.last.setdefault(conn, {})[group] = last

    def _announce(self, key: Key, epoch: str, complete: bool) -> None:
        if complete:
            self.recovered += 1
        else:
            self.unrecoverable += 1
        self.send(key[0], json.dumps({"group": key[1], "epoch": epoch,
                                      "recovered": complete}, separators=(",", ":")),
                  key[1], "")


def _frame(group: str, epoch: str, offset: int, data: Any) -> str:
    return json.dumps({"group": group, "epoch": epoch, "offset": offset, "data": data},
                      separators=(",", ":"), default=str)
