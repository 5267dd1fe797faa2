"""The gateway's recovery merge, without sockets: the seam between recovered and live messages."""

from __future__ import annotations

import json
from typing import Any

from cluster.gateway.ws_history import GroupFeed


class Feed:
    def __init__(self) -> None:
        self.out: list[tuple[int, dict[str, Any]]] = []
        self.asked: list[tuple[int, str, str, int]] = []
        self.group = {1, 2}
        self.feed = GroupFeed(self, self, timeout=5.0)

    # -- the feed's output (a `FeedOutput`) and its history (a `HistorySource`) --
    def members_of(self, _group: str) -> set[int]:
        return self.group

    def queue_numbered(self, conn: int, text: str, _group: str, _event_id: str) -> None:
        self.out.append((conn, json.loads(text)))

    def ask(self, rid: int, group: str, epoch: str, offset: int) -> bool:
        self.asked.append((rid, group, epoch, offset))
        return True

    def to(self, conn: int) -> list[Any]:
        return [m.get("offset", m.get("recovered")) for c, m in self.out if c == conn]


def test_the_seam_between_recovery_and_live_has_no_gap_and_no_duplicate() -> None:
    f = Feed()
    f.feed.subscribe(1, "g", "E", 3, now=0.0)
    f.feed.on_message("g", "E", 6, "live6")  # held for 1, sent to 2
    f.feed.on_message("g", "E", 7, "live7")
    rid = f.asked[0][0]
    f.feed.on_answer(rid, "E", [[4, "d4"], [5, "d5"], [6, "d6"]], True)
    f.feed.on_message("g", "E", 7, "again")  # a duplicate: never twice
    f.feed.on_message("g", "E", 8, "live8")
    assert f.to(1) == [True, 4, 5, 6, 7, 8]
    assert f.to(2) == [6, 7, 8]


def test_unrecoverable_or_unanswered_is_said_then_live() -> None:
    f = Feed()
    f.feed.subscribe(1, "g", "E", 3, now=0.0)
    f.feed.on_message("g", "E", 9, "live")
    f.feed.on_answer(f.asked[0][0], "F", [], False)
    assert f.to(1) == [False, 9]
    f.feed.subscribe(2, "g", "E", 1, now=0.0)
    f.feed.check(2, now=6.0)  # no answer within the timeout
    assert f.to(2) == [9, False]
    f.feed.subscribe(1, "g", None, None, now=0.0)  # a malformed since: said at once
    assert f.to(1)[-1] is False
