"""Credit-based dispatch from one gateway to the workers connected to it.

Theory of operation
-------------------
Each worker connects a DEALER to this gateway's ROUTER and says HELLO with a credit:
how many requests it will take from us at once. A request goes only to a worker
with credit, the one with the fewest requests in flight first; a final response
gives the credit back. When no worker has credit, requests wait in a bounded queue.

Every request gets exactly one answer. The table of pending ids is ordered by
dispatch time and all share one timeout, so expiry is a scan from the front.
- Worker silent for heartbeat_interval x liveness, or unreachable on send: it is
  dropped; its GET/HEAD requests whose response has not started are sent once more
  to another worker, all others get 502.
- No worker known: 503 with Retry-After at once. Queue full or queued too long: 503.
- No final response within request_timeout: 504; a late reply is discarded but
  still returns the worker's credit.

A worker that stops (SIGTERM, a rolling restart) says HELLO with credit 0: it gets
no new request and no new WebSocket, its WebSockets are closed with 1012 so their
clients reconnect to another worker, and what it holds is answered as usual. Our
WELCOME tells it that nothing more is on the way (the link is ordered), and once it
is done it says BYE and is dropped quietly.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from cluster.gateway.exchange import Exchange
from cluster.gateway.ws_hub import WebSocketHub
from cluster.plumbing import wire
from cluster.plumbing.response_parts import ResponseHead, read_part
from cluster.plumbing.zmqio import Outbox

if TYPE_CHECKING:
    from cluster.etcd.sequencer import Sequencer

log = logging.getLogger("cluster.gateway.dispatch")

RETRY_AFTER = [("retry-after", "1")]


class WorkerLink:
    __slots__ = ("credit", "draining", "ident", "inflight", "last_seen", "name")

    def __init__(self, ident: bytes, name: str, credit: int, now: float) -> None:
        self.ident = ident
        self.name = name
        self.credit = credit
        self.inflight = 0
        self.last_seen = now
        self.draining = False  # said HELLO with credit 0: finishing what it holds


class Dispatcher:
    def __init__(self, loop: asyncio.AbstractEventLoop, gateway_id: str, *,
                 request_timeout: float, peer_expiry: float, max_queue: int,
                 defer_timeout: float = 60.0) -> None:
        self.loop = loop
        self.gateway_id = gateway_id
        # Workers' sockets name this gateway instance in their identity (worker@gateway);
        # one that names another was meant for a gateway that was here before us.
        self._mine = f"@{gateway_id}".encode()
        self.stale_frames = 0
        self.request_timeout = request_timeout
        self.peer_expiry = peer_expiry
        self.max_queue = max_queue
        self.pump: Outbox | None = None  # the gateway sets its ROUTER's pump
        self.workers: dict[bytes, WorkerLink] = {}
        self.pending: dict[int, Exchange] = {}
        # Deferred requests: answered later by any worker; ordered by deadline too.
        self.deferred: dict[int, Exchange] = {}
        # Requests answered by reply() before their worker's DEFERRED came (the two
        # travel on different links): the DEFERRED still returns the worker's credit.
        self.replied_early: set[int] = set()
        self.defer_timeout = defer_timeout
        self.waiting: deque[Exchange] = deque()
        self._links: list[WorkerLink] = []  # self.workers' values, for rotation
        self._turn = 0
        self._next_id = 0
        self.late_replies = 0
        self.hub: WebSocketHub | None = None
        self.sequencer: Sequencer | None = None  # on etcd: state batches to commit
        self.linked = asyncio.Event()  # some worker has said HELLO with credit

    # -- from the HTTP side ------------------------------------------------
    def submit(self, ex: Exchange) -> None:
        if not self.workers:
            ex.sink.deliver_error(ex, 503, RETRY_AFTER)
            return
        link = self._pick()
        if link is not None and not self.waiting:
            self._send(ex, link)
        elif len(self.waiting) >= self.max_queue:
            log.warning("dispatch queue full (%d); 503", self.max_queue)
            ex.sink.deliver_error(ex, 503, RETRY_AFTER)
        else:
            ex.deadline = self.loop.time() + self.request_timeout
            self.waiting.append(ex)

    def client_gone(self, ex: Exchange) -> None:
        """The client of a request at a worker went away: tell the worker (an ASGI
        app gets http.disconnect). Its answer still comes, and returns the credit."""
        if ex.worker is not None and self.pending.get(ex.id) is ex:
            self._post(ex.worker, wire.envelope(wire.GONE, id=ex.id))

    def stream_credit(self, ex: Exchange, nbytes: int) -> None:
        """A part of a worker's streamed response went to its client."""
        if ex.worker is not None and self.pending.get(ex.id) is ex:
            self._post(ex.worker, wire.envelope(wire.STREAM_CREDIT, id=ex.id, bytes=nbytes))

    def live_workers(self) -> list[tuple[bytes, str]]:
        """Workers that take new work (WebSockets are placed among them)."""
        return [(link.ident, link.name) for link in self._links if not link.draining]

    def serving(self) -> int:
        """How many workers take new requests."""
        return sum(1 for link in self._links if not link.draining)

    def post_to(self, ident: bytes, msg: dict[str, Any]) -> None:
        self._post(ident, msg)

    def _pick(self) -> WorkerLink | None:
        """The worker with credit and the fewest requests in flight; ties rotate, so
        sequential traffic spreads and a newly joined worker is used at once."""
        links = self._links
        count = len(links)
        if count == 1:
            only = links[0]
            return only if only.credit > 0 else None
        self._turn = (self._turn + 1) % count if count else 0
        best: WorkerLink | None = None
        for i in range(count):
            link = links[(self._turn + i) % count]
            if link.credit > 0 and (best is None or link.inflight < best.inflight):
                best = link
        return best

    def _send(self, ex: Exchange, link: WorkerLink) -> None:
        self._next_id += 1
        ex.id = self._next_id
        ex.sent_to(link.ident)
        ex.deadline = self.loop.time() + self.request_timeout
        link.credit -= 1
        link.inflight += 1
        self.pending[ex.id] = ex
        env = ex.envelope
        env["id"] = ex.id
        assert self.pump is not None
        self.pump.post(env, to=link.ident)

    def _drain_waiting(self) -> None:
        waiting = self.waiting
        while waiting:
            ex = waiting[0]
            if ex.sink.closed:
                waiting.popleft()
                continue
            link = self._pick()
            if link is None:
                return
            waiting.popleft()
            self._send(ex, link)

    # -- from the workers --------------------------------------------------
    def on_messages(self, peer: bytes | None, messages: list[dict[str, Any]]) -> None:
        assert peer is not None  # the dispatch Pump is routed
        if not peer.endswith(self._mine):
            # Held by a worker's socket for the gateway that had this endpoint before
            # (it died, this one started): not ours to act on. Unanswered, that link
            # goes silent at the worker and is closed there.
            if self.stale_frames == 0:
                log.warning("messages from %s, meant for another gateway at this "
                            "endpoint; dropped", peer.decode(errors="replace"))
            self.stale_frames += len(messages)
            return
        link = self.workers.get(peer)
        now = self.loop.time()
        if link is not None:
            link.last_seen = now
        returned = False
        for msg in messages:
            kind = msg["k"]
            if kind == wire.RESPONSE:
                ex = self.pending.get(msg["id"])
                final = not msg["more"]
                if ex is None or ex.worker != peer:
                    if final and link is not None:
                        # A late reply (after 504) or a worker we gave up on.
                        self.late_replies += 1
                        returned = _give_back(link)
                    continue
                if final:
                    del self.pending[ex.id]
                    if link is not None:
                        returned = _give_back(link)
                ex.sink.deliver(ex, read_part(msg))
            elif kind == wire.HEARTBEAT:
                if link is None:
                    self._post(peer, wire.envelope(wire.WHO))
            elif kind == wire.HELLO:
                self._hello(peer, msg, now)
                returned = True
            elif kind == wire.BYE:
                self.drop_worker(peer, "left after draining", orderly=True)
            elif kind == wire.DEFERRED:
                ex = self.pending.get(msg["id"])
                if ex is not None and ex.worker == peer:
                    # The worker is done with it: its credit comes back now.
                    del self.pending[ex.id]
                    if ex.id in self.replied_early:
                        self.replied_early.discard(ex.id)  # and it is answered already
                    else:
                        ex.deadline = now + self.defer_timeout
                        self.deferred[ex.id] = ex
                    if link is not None:
                        returned = _give_back(link)
                elif link is not None:  # after its 504, or from a worker we gave up on
                    returned = _give_back(link)
            elif kind == wire.DEFERRED_REPLY:
                ex = self.deferred.pop(msg["id"], None)
                if ex is None:
                    # Another worker's reply() can overtake the DEFERRED of the worker
                    # that deferred it: the request is still pending then.
                    ex = self.pending.get(msg["id"])
                    if ex is None or ex.id in self.replied_early:
                        log.info("reply to request %d, which is not waiting (answered, "
                                 "timed out or unknown); dropped", msg["id"])
                        continue
                    self.replied_early.add(ex.id)
                if ex is not None:
                    ex.sink.deliver(ex, ResponseHead(msg["status"], msg["head"], msg["body"],
                                                     False))
            elif kind == wire.WS_ACTIONS and self.hub is not None:
                self.hub.on_actions(peer, msg)
            elif kind == wire.WS_GROUPS_ACK and self.hub is not None:
                self.hub.notices.answered(peer, msg)
            elif kind == wire.STATE_BATCHES and self.sequencer is not None:
                self.sequencer.on_batches(peer, msg)
            elif kind == wire.WS_QUERY and self.hub is not None:
                self._post(peer, wire.envelope(wire.WS_QUERY_REPLY, rid=msg["rid"],
                                               conns=self.hub.groups.listed(msg["group"])))
            else:
                log.warning("unexpected %s from worker; ignored", kind)
        if returned and self.waiting:
            self._drain_waiting()

    def _hello(self, peer: bytes, msg: dict[str, Any], now: float) -> None:
        link = self.workers.get(peer)
        credit = max(0, msg["credit"])
        fresh = link is None
        if link is None:
            link = self.workers[peer] = WorkerLink(peer, msg["id"], credit, now)
            self._links = list(self.workers.values())
            log.info("worker %s connected with credit %d", msg["id"], credit)
        else:
            link.credit = credit - link.inflight
        draining = credit == 0
        was_live = not fresh and not link.draining
        link.draining = draining
        if draining and was_live:
            log.info("worker %s is draining (%d requests in flight)", link.name,
                     link.inflight)
            if self.hub is not None:
                self.hub.worker_draining(peer)
        if not draining:
            self.linked.set()
            if not was_live and self.hub is not None:
                self.hub.shards.rebalance()  # it may now own shard keys held elsewhere
        self._post(peer, wire.envelope(wire.WELCOME, id=self.gateway_id))
        if fresh and self.sequencer is not None:
            self.sequencer.greet(peer)
        if fresh and self.hub is not None:
            self.hub.notices.greet(peer, self.hub.groups.names())

    def _post(self, peer: bytes, msg: dict[str, Any]) -> None:
        assert self.pump is not None
        self.pump.post(msg, to=peer)

    def on_send_error(self, peer: bytes | None, _msgs: list[dict[str, Any]]) -> None:
        """The ROUTER could not reach `peer`: it is gone (or hopelessly behind)."""
        if peer is not None and peer in self.workers:
            self.drop_worker(peer, "unreachable")

    # -- time ----------------------------------------------------------------
    def heartbeat(self) -> None:
        """Every interval: ping each worker, drop the silent ones."""
        now = self.loop.time()
        for link in list(self.workers.values()):
            if now - link.last_seen > self.peer_expiry:
                self.drop_worker(link.ident, "missed its heartbeats")
            else:
                self._post(link.ident, wire.envelope(wire.HEARTBEAT, id=self.gateway_id))

    def probe(self) -> None:
        """A peer disconnected: ping everyone now, so a send error names the dead one."""
        for link in self.workers.values():
            self._post(link.ident, wire.envelope(wire.HEARTBEAT, id=self.gateway_id))
        if self.pump is not None:
            self.pump.flush()

    def expire(self) -> None:
        """Answer every request past its deadline (called several times a second)."""
        now = self.loop.time()
        for ex in _take_due(self.pending, now):
            if ex.id in self.replied_early:  # answered; its worker never said DEFERRED
                self.replied_early.discard(ex.id)
                continue
            log.warning("request %d: no response from worker within %.1fs; 504",
                        ex.id, self.request_timeout)
            ex.sink.deliver_error(ex, 504)
        for ex in _take_due(self.deferred, now):
            log.warning("deferred request %d: no reply within %.0fs; 504", ex.id,
                        self.defer_timeout)
            ex.sink.deliver_error(ex, 504)
        waiting = self.waiting
        while waiting and waiting[0].deadline <= now:
            ex = waiting.popleft()
            ex.sink.deliver_error(ex, 503, RETRY_AFTER)

    def drop_worker(self, ident: bytes, why: str, orderly: bool = False) -> None:
        link = self.workers.pop(ident, None)
        if link is None:
            return
        self._links = list(self.workers.values())
        (log.info if orderly else log.warning)("worker %s %s; dropped from dispatch",
                                               link.name, why)
        if self.hub is not None:
            self.hub.worker_gone(ident)
        lost = [ex for ex in self.pending.values() if ex.worker == ident]
        for ex in lost:
            del self.pending[ex.id]
            if ex.id in self.replied_early:  # answered by another worker's reply()
                self.replied_early.discard(ex.id)
                continue
            if ex.sink.closed:
                continue
            if ex.retryable and self.workers:
                ex.retry()
                log.info("request %d: retrying %s on another worker", ex.id, ex.method)
                self.submit(ex)
            else:
                ex.sink.deliver_error(ex, 502)

    def goodbye(self) -> None:
        """We stop: tell every worker, so one that drains too does not wait for us."""
        for link in self.workers.values():
            self._post(link.ident, wire.envelope(wire.BYE, id=self.gateway_id))

    def fail_all(self, status: int) -> None:
        for ex in [*self.pending.values(), *self.deferred.values()]:
            ex.sink.deliver_error(ex, status)
        self.pending.clear()
        self.deferred.clear()
        while self.waiting:
            ex = self.waiting.popleft()
            ex.sink.deliver_error(ex, status)


def _give_back(link: WorkerLink) -> bool:
    """A request the worker held is over for it: one credit back. True, for the caller
    to note that credit returned (queued requests may go now)."""
    link.credit += 1
    link.inflight -= 1
    return True


def _take_due(table: dict[int, Exchange], now: float) -> list[Exchange]:
    """Remove and return the exchanges past their deadline. Tables are kept in
    deadline order (one timeout each), so the scan stops at the first one not due."""
    due: list[Exchange] = []
    for ex in table.values():
        if ex.deadline > now:
            break
        due.append(ex)
    for ex in due:
        del table[ex.id]
    return due
