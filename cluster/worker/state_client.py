"""The worker's half of shared state: the replica, fed by the coordinator's PUB, and
the path for writes, which go to the coordinator and wait for its acknowledgement.

Joining (Clone pattern): subscribe first, then ask for a snapshot; updates that
arrive meanwhile are held by the replica and applied after the snapshot. Any gap,
a heartbeat ahead of us, or a new coordinator epoch: ask for a snapshot again.

Writes come from handler threads (`call`, blocking) or coroutines (`acall`); either
way they are sent from the loop, and each waits for its STATE_ACK at most
`--state-timeout`. When the coordinator is silent, writes fail at once with
`StateUnavailable`; reads go on from the replica.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any

import zmq

from cluster.errors import StateError, StateUnavailable
from cluster.plumbing import wire
from cluster.plumbing.coordinator_link import CoordinatorLink
from cluster.plumbing.zmqio import Pump
from cluster.worker.replica import MAX_HELD, Offer, Replica, ReplicaReads
from cluster.worker.threadpool import wait_lent

log = logging.getLogger("cluster.worker.state")

Waiter = asyncio.Future[list[Any]]


class StateClient(ReplicaReads):
    def __init__(self, loop: asyncio.AbstractEventLoop, zmq_context: zmq.Context[zmq.Socket[bytes]],
                 link: CoordinatorLink, timeout: float, framework: dict[str, Any]) -> None:
        self.loop = loop
        self.zmq_context = zmq_context
        self.link = link
        self.timeout = timeout
        self.framework_keys = framework
        self.replica = Replica()
        self.loop_thread = threading.get_ident()
        self.sub: Pump | None = None
        self.pub_endpoint = ""
        self._rid = 0
        self._waiting: dict[int, Waiter] = {}
        self._snapshot_rid = 0
        self._snapshot_parts: list[list[Any]] = []
        self.synced = asyncio.Event()
        self.resyncs = 0
        self.ops: dict[str, int] = {}  # operations sent, by kind (loop thread only)
        self.failures = 0  # batches refused or unanswered

    # -- Backend, for cluster.state.SharedState (reads: ReplicaReads) --------------
    def call(self, ops: list[list[Any]]) -> list[Any]:
        """From a handler thread: send `ops`, block until acknowledged."""
        self.refuse_on_loop()
        result: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()

        def start() -> None:
            fut = self._send(ops)
            fut.add_done_callback(lambda f: _copy(f, result))

        self.loop.call_soon_threadsafe(start)
        try:
            return wait_lent(result, self.timeout + 1.0)
        except concurrent.futures.TimeoutError:
            raise StateUnavailable("no answer from the coordinator") from None

    async def acall(self, ops: list[list[Any]]) -> list[Any]:
        return await self._send(ops)

    def _send(self, ops: list[list[Any]]) -> Waiter:
        fut: Waiter = self.loop.create_future()
        if not self.link.connected:
            self.failures += 1
            fut.set_exception(StateUnavailable("the coordinator is unreachable"))
            return fut
        for op in ops:
            self.ops[op[0]] = self.ops.get(op[0], 0) + 1
        self._rid += 1
        rid = self._rid
        self._waiting[rid] = fut
        self.link.post(wire.envelope(wire.STATE_OP, id=self.link.member_id, rid=rid, ops=ops))
        self.loop.call_later(self.timeout, self._expire, rid)
        return fut

    def _expire(self, rid: int) -> None:
        fut = self._waiting.pop(rid, None)
        if fut is not None and not fut.done():
            self.failures += 1
            fut.set_exception(StateUnavailable(
                f"the coordinator did not acknowledge within {self.timeout}s"))

    # -- from the coordinator link -----------------------------------------------------
    def on_coordinator(self, msg: dict[str, Any]) -> None:
        kind = msg["k"]
        if kind == wire.STATE_ACK:
            fut = self._waiting.pop(msg["rid"], None)
            if msg["ok"]:
                changes = msg.get("changes")
                if changes and isinstance(msg.get("seq"), int) and \
                        isinstance(msg.get("epoch"), str):
                    # Apply now, so the writer reads its write before the PUB brings it.
                    self._offer(msg["epoch"], msg["seq"], changes)
                if fut is not None and not fut.done():
                    fut.set_result(list(msg.get("results") or []))
            elif fut is not None and not fut.done():
                self.failures += 1
                error = str(msg.get("error", "refused"))
                # Not the operation's fault (the coordinator cannot write its log): 503.
                fut.set_exception(StateUnavailable(error) if msg.get("unavailable")
                                  else StateError(error))
        elif kind == wire.SNAPSHOT:
            self._on_snapshot(msg)
        elif kind == wire.MEMBERS:
            info = msg.get("state")
            if isinstance(info, dict) and isinstance(info.get("pub"), str):
                self._subscribe(info["pub"])
                if not self.replica.synced or info.get("epoch") != self.replica.epoch:
                    self.resync()
        elif kind == wire.HEARTBEAT:
            pass

    def _subscribe(self, endpoint: str) -> None:
        if endpoint == self.pub_endpoint and self.sub is not None:
            return
        if self.sub is not None:
            self.sub.close()
        sock = self.zmq_context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.link.security.coordinator_client(sock)  # the PUB is the coordinator's
        sock.connect(endpoint)
        self.pub_endpoint = endpoint
        self.sub = Pump(self.loop, sock, self, routed=False)

    def resync(self) -> None:
        if not self.link.connected and self.replica.synced:
            return
        self.resyncs += 1
        self._rid += 1
        self._snapshot_rid = self._rid
        self._snapshot_parts = []
        self.link.post(wire.envelope(wire.SNAPSHOT_REQUEST, id=self.link.member_id,
                                     rid=self._snapshot_rid))
        self.loop.call_later(self.timeout, self._snapshot_overdue, self._snapshot_rid)

    def _snapshot_overdue(self, rid: int) -> None:
        """A snapshot request that got no answer (the coordinator went away) must
        not block the next one."""
        if self._snapshot_rid == rid:
            self._snapshot_rid = 0
            self._snapshot_parts = []

    def _on_snapshot(self, msg: dict[str, Any]) -> None:
        if msg["rid"] != self._snapshot_rid:
            return  # an answer to a request we have given up on
        self._snapshot_parts.append(msg["entries"])
        if msg["last"]:
            entries = [e for part in self._snapshot_parts for e in part
                       if isinstance(e, list) and len(e) == 3]
            self._snapshot_parts = []
            self._snapshot_rid = 0
            self.replica.load(msg["epoch"], msg["seq"], entries)
            log.info("state snapshot: %d keys at seq %d", len(entries), msg["seq"])
            self.synced.set()

    # -- from the coordinator's PUB (this client is its SUB pump's receiver) -----------
    def on_messages(self, _peer: bytes | None, messages: list[dict[str, Any]]) -> None:
        for msg in messages:
            if msg["k"] == wire.UPDATE:
                self._offer(msg["epoch"], msg["seq"], msg["changes"])
            elif msg["k"] == wire.STATE_HEARTBEAT and self.replica.synced and \
                    not self._snapshot_rid and self.replica.check(msg["epoch"], msg["seq"]):
                log.warning("state replica at seq %d missed updates (coordinator at "
                            "%d); taking a snapshot", self.replica.seq, msg["seq"])
                self.resync()

    def on_send_error(self, _peer: bytes | None, _messages: list[dict[str, Any]]) -> None:
        pass  # a SUB socket sends nothing

    def _offer(self, epoch: str, seq: int, changes: list[Any]) -> None:
        if not self.replica.synced:
            # Before the first snapshot: hold it; the snapshot decides what counts.
            if len(self.replica.held) < MAX_HELD:
                self.replica.held.setdefault(seq, changes)
            return
        if self.replica.offer(epoch, seq, changes) is Offer.RESYNC and not self._snapshot_rid:
            self.resync()

    def close(self) -> None:
        if self.sub is not None:
            self.sub.close()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(StateUnavailable("the worker is stopping"))


def _copy(src: Waiter, dst: concurrent.futures.Future[list[Any]]) -> None:
    exc = src.exception()
    if exc is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())
