"""Which groups this gateway holds, told to every worker linked to it, so that a
broadcast goes only to the gateways that hold members of its group.

- When a group gets its first member here, or loses its last, every linked worker is
  told (WS_GROUPS: `held`, `dropped`), once per loop pass for all the groups that
  changed in it. A worker that links is told every group held (`full`).
- The notice goes on the same ordered link as everything this gateway sends that
  worker. Whatever reaches a worker through this gateway after a join (a client's
  message, a request) arrives after the notice: a broadcast the worker sends
  because of it reaches the new member.
- Every worker answers each notice (WS_GROUPS_ACK). Until all linked workers have
  answered the notice of a group's first member, what the gateway sends that
  connection (or any other that joins the group meanwhile) is held: a client that
  sees anything sent after its join knows every worker will broadcast to it. Say
  A joins a room and is told "welcome"; B, on another gateway, posts to the room
  after A saw it: whichever worker handles B's post knows A's gateway holds the
  room. (A worker that does not answer within RELEASE_AFTER does not hold anyone
  longer: one line says so; it is dropped from dispatch when its heartbeats stop.)
- A worker's own joins reach it before any notice could (it sent them): it counts
  this gateway as a holder from the moment it sends one. A `dropped` notice says up
  to which of that worker's action messages (`seen`, their number `n`) the gateway
  had read: one that crossed the worker's later join is not taken for the truth.

Nothing else holds this map for broadcasts: it lives between each gateway and its
workers, and a gateway's restart tells them afresh. Published messages (history)
follow it too, through the `directory`: the coordinator is told (GROUPS_HELD; all
groups when it asks, after the gateway registers) and sends a published message only
to the gateways holding its group; on etcd the gateway watches only the keys of the
groups it holds (cluster/etcd/history.py). Either answers a notice like a worker, once
it delivers that group here, before a new member is released.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from cluster.gateway.ws_session import WorkerPosts
from cluster.plumbing import wire

if TYPE_CHECKING:
    import asyncio

    from cluster.plumbing.coordinator_link import CoordinatorLink

log = logging.getLogger("cluster.gateway.ws")

RELEASE_AFTER = 1.0  # seconds a notice may wait for a worker's answer
DIRECTORY = b""  # the directory's place among those a notice waits for


class Directory(Protocol):
    """Where published messages come from, told which groups are held here."""

    def groups_changed(self, held: list[str], dropped: list[str], round_: int) -> bool:
        """True: it answers `round_` (GroupNotices.answered(DIRECTORY, {"r": round_}))
        once it delivers the groups held."""
        ...


class CoordinatorDirectory:
    """The coordinator, over the gateway's link to it: told which groups are held here
    (a `Directory`) and asked for their history at a recovery (a ws_history.py
    `HistorySource`), as `EtcdHistory` is on etcd."""

    def __init__(self, loop: asyncio.AbstractEventLoop, link: CoordinatorLink,
                 gateway_id: str) -> None:
        self.loop = loop
        self.link = link
        self.gateway_id = gateway_id

    def groups_changed(self, held: list[str], dropped: list[str], round_: int) -> bool:
        if not self.link.connected:
            return False  # it asks for everything when it is back
        self.link.post(wire.envelope(wire.GROUPS_HELD, id=self.gateway_id, held=held,
                                     dropped=dropped, full=False, r=round_))
        return True

    def tell_all(self, groups: list[str]) -> None:
        """It asked (we registered): every group held here."""
        self.link.post(wire.envelope(wire.GROUPS_HELD, id=self.gateway_id, held=groups,
                                     dropped=[], full=True, r=0))

    def ask(self, rid: int, group: str, epoch: str, offset: int) -> bool:
        """A recovery's question; answered by HISTORY_ANSWER on the link."""
        if not self.link.connected:
            return False
        # After this pass's group notice (call_soon keeps the order): the coordinator
        # must know this gateway holds the group before it answers, or what it numbers
        # in between would be neither in the answer nor sent here.
        self.loop.call_soon(self.link.post, wire.envelope(
            wire.HISTORY_QUERY, id=self.gateway_id, rid=rid, group=group, epoch=epoch,
            offset=offset))
        return True


class HeldOutput(Protocol):
    """Who holds output back until notices are read (the `WebSocketHub`)."""

    def release(self, acked: int) -> None:
        """Every notice up to `acked` is answered: write what waited for them."""


class GroupNotices:
    def __init__(self, loop: asyncio.AbstractEventLoop, posts: WorkerPosts,
                 held: HeldOutput) -> None:
        self.loop = loop
        self.posts = posts
        self.held = held
        self.directory: Directory | None = None
        self.seen: dict[bytes, int] = {}  # worker -> the `n` of its last action message read
        self._changed: dict[str, bool] = {}  # group -> held now, since the last notice
        self._scheduled = False
        self.sent = 0
        self.rounds = 0  # notices sent to all workers, numbered
        self.acked = 0  # every notice up to this one is answered by every worker
        self.unanswered: dict[int, set[bytes]] = {}  # round -> workers yet to answer
        self.late = 0  # rounds released without every answer

    def saw(self, worker: bytes, msg: dict[str, Any]) -> None:
        n = msg.get("n")
        if type(n) is int:
            self.seen[worker] = n

    def changed(self, group: str, held: bool) -> int:
        """Note a change; the round of the notice that will carry it."""
        self._changed[group] = held
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._notify)
        return self.rounds + 1

    def answered(self, worker: bytes, msg: dict[str, Any]) -> None:
        waiting = self.unanswered.get(msg["r"])
        if waiting is not None:
            waiting.discard(worker)
            self._advance()

    def worker_gone(self, worker: bytes) -> None:
        for waiting in self.unanswered.values():
            waiting.discard(worker)
        self._advance()

    def greet(self, worker: bytes, groups: list[str]) -> None:
        """A worker that linked: every group held here."""
        self.sent += 1
        self.posts.post_to(worker, wire.envelope(
            wire.WS_GROUPS, held=groups, dropped=[], seen=self.seen.get(worker, 0), full=True,
            r=0))

    def _notify(self) -> None:
        self._scheduled = False
        changed, self._changed = self._changed, {}
        held = sorted(g for g, now_held in changed.items() if now_held)
        dropped = sorted(g for g, now_held in changed.items() if not now_held)
        self.rounds += 1
        workers = list(self.posts.workers)
        self.unanswered[self.rounds] = set(workers)
        if self.directory is not None and \
                self.directory.groups_changed(held, dropped, self.rounds):
            self.unanswered[self.rounds].add(DIRECTORY)
        for worker in workers:
            self.sent += 1
            self.posts.post_to(worker, wire.envelope(
                wire.WS_GROUPS, held=held, dropped=dropped, seen=self.seen.get(worker, 0),
                full=False, r=self.rounds))
        self.loop.call_later(RELEASE_AFTER, self._release, self.rounds)
        self._advance()

    def _release(self, round_: int) -> None:
        waiting = self.unanswered.get(round_)
        if waiting:
            self.late += 1
            log.warning("%d worker(s) did not answer the group notice within %gs; "
                        "releasing the connections it held", len(waiting), RELEASE_AFTER)
            waiting.clear()
            self._advance()

    def _advance(self) -> None:
        moved = False
        while self.acked < self.rounds and not self.unanswered.get(self.acked + 1):
            self.unanswered.pop(self.acked + 1, None)
            self.acked += 1
            moved = True
        if moved:
            self.held.release(self.acked)
