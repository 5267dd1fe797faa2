"""Group history: the last messages published to each group, numbered in order.

Pure: no sockets, time passed in. The coordinator is the one place every publish of
a group passes, so it numbers them: offsets 1, 2, 3... per group, under an epoch
that is new each time the coordinator starts, unless `--data-dir` keeps the history
(history_log.py restores the book and its epoch); a client holding an offset of
another epoch cannot be told what it missed. A group keeps at most `size` messages,
none older than `ttl` seconds.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Any


class GroupHistory:
    __slots__ = ("last", "messages")

    def __init__(self) -> None:
        self.last = 0  # the newest offset given
        self.messages: deque[tuple[int, float, Any]] = deque()  # offset, time, data


class HistoryBook:
    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self.epoch = uuid.uuid4().hex[:12]
        self.groups: dict[str, GroupHistory] = {}

    def publish(self, group: str, data: Any, now: float) -> int:
        """Keep `data` as the group's next message; its offset."""
        history = self.groups.get(group)
        if history is None:
            history = self.groups[group] = GroupHistory()
        history.last += 1
        history.messages.append((history.last, now, data))
        while len(history.messages) > self.size:
            history.messages.popleft()
        self._trim(history, now)
        return history.last

    def withdraw(self, group: str) -> None:
        """Take back the group's newest message, which could not be kept on disk: its
        offset is given again to the next one, as no client ever saw it."""
        history = self.groups[group]
        if history.messages and history.messages[-1][0] == history.last:
            history.messages.pop()
        history.last -= 1

    def restore(self, group: str, offset: int, at: float | None = None,
                data: Any = None) -> None:
        """A message (or, with no `at`, only the group's position) read back from the
        disk, in offset order."""
        history = self.groups.get(group)
        if history is None:
            history = self.groups[group] = GroupHistory()
        history.last = max(history.last, offset)
        if at is not None:
            history.messages.append((offset, at, data))
            while len(history.messages) > self.size:
                history.messages.popleft()

    def since(self, group: str, epoch: str | None, offset: int | None, now: float
              ) -> tuple[list[list[Any]], bool]:
        """The group's messages after `offset` ([offset, data] each), and whether they
        are all the client missed: False when the epoch is another one, or the first
        message after its offset is no longer kept."""
        history = self.groups.get(group)
        if history is not None:
            self._trim(history, now)
        if epoch != self.epoch or offset is None or offset < 0:
            return [], False
        if history is None:
            return [], offset == 0
        if offset > history.last:
            return [], False  # an offset we never gave
        first = history.messages[0][0] if history.messages else history.last + 1
        if offset + 1 < first:
            return [], False  # what follows it is gone
        return [[o, data] for o, _t, data in history.messages if o > offset], True

    def position(self, group: str) -> int:
        history = self.groups.get(group)
        return history.last if history is not None else 0

    def _trim(self, history: GroupHistory, now: float) -> None:
        messages = history.messages
        while messages and now - messages[0][1] > self.ttl:
            messages.popleft()
