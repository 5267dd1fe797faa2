"""The worker's shared state on etcd: a replica fed by a watch, writes as transactions.

The mapping
-----------
- A key `k` is `/NAME/s/k`; its value is msgpack `[value, expires_at]` (0: never).
- The replica's sequence number is etcd's revision. It is filled by reading the
  prefix at revision R, then follows a watch from R + 1, which etcd delivers
  complete and in order. A watch that breaks (the member died, lost its leader, or
  the revision was compacted) is resumed from the replica's revision on another
  member; if that revision is compacted, the replica is read afresh.
- Writes (cluster/etcd/commits.py): a batch is computed with the coordinator's own
  rules on the values the replica holds and committed as one etcd transaction that
  compares each key's `mod_revision` (compare-and-set), in groups. When a gateway
  is the elected sequencer (cluster/etcd/sequencer.py), batches go to it over the
  gateway link instead: it commits every worker's batches together, so a key all
  workers write costs one transaction per round trip, not a lost race per worker.
  A sequencer that says it is no longer one applied nothing: the batch is then
  committed here.
- The handler's call returns once the transaction is committed (etcd has it on a
  quorum's disks) and the replica has applied its revision: it reads its writes.
- No answer from a quorum within `--state-timeout`: `StateUnavailable` (503).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

import aetcd

from cluster.errors import EtcdUnavailable, StateError, StateUnavailable
from cluster.etcd.commits import Committer, KnownValues
from cluster.etcd.session import EtcdSession, parse_backend, stop_watch
from cluster.plumbing import wire
from cluster.plumbing.config import WorkerConfig
from cluster.worker.replica import ReplicaReads

log = logging.getLogger("cluster.etcd.state")

WATCH_LAG = 0.5  # seconds a committed revision may take to come through the watch


class GatewayRoute(Protocol):
    """What a batch needs of the worker's link to the sequencer gateway (a
    `GatewayLink` is one): whether it is up, and the way there."""

    welcomed: bool
    gone: bool

    def post(self, msg: dict[str, Any]) -> None: ...


class EtcdState(ReplicaReads):
    """What the worker uses of `StateClient`, on etcd (see the module's text)."""

    replica: KnownValues

    def __init__(self, loop: asyncio.AbstractEventLoop, config: WorkerConfig,
                 framework: dict[str, Any]) -> None:
        self.loop = loop
        self.timeout = config.state_timeout
        self.target = parse_backend(config.state_backend)
        self.session = EtcdSession(self.target, config.state_timeout)
        # The watch has a channel of its own: a member that stalls it need not be the
        # one the writes use, and the writes' rotations must not break it.
        self.watch_session = EtcdSession(self.target, config.state_timeout)
        self.prefix = self.target.prefix + b"s/"
        self.framework_keys = framework
        self.replica = KnownValues()
        self.loop_thread = threading.get_ident()
        self.synced = asyncio.Event()
        self.resyncs = 0
        self.ops: dict[str, int] = {}
        self.failures = 0
        self.committer = Committer(loop, self.session, self.target, self.replica)
        # The elected sequencer, as its claims say (gateway id, fencing token), and the
        # links to the gateways (the worker's own dict): set by the worker.
        self.sequencer: tuple[str, int] | None = None
        self.links: Mapping[str, GatewayRoute] = {}
        self.sequenced = 0  # batches committed by the sequencer
        self._asked: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._rid = 0
        self.worker_id = ""
        # Calls waiting for the replica to reach a revision: (revision, n, future). A
        # future each, woken by the watch or a timer: no task per call.
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waits = 0
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_began = 0.0
        self._closing_now = False
        self._stopping_watch: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = self.loop.create_task(self._follow())

    # -- Backend, for cluster.state.SharedState (reads: ReplicaReads) --------------
    def call(self, ops: list[list[Any]]) -> list[Any]:
        self.refuse_on_loop()
        future = asyncio.run_coroutine_threadsafe(self.acall(ops), self.loop)
        try:
            return future.result(self.timeout + 1.0)
        except concurrent.futures.TimeoutError:
            raise StateUnavailable("no answer from etcd") from None

    @property
    def conflicts(self) -> int:
        return self.committer.conflicts

    async def acall(self, ops: list[list[Any]]) -> list[Any]:
        for op in ops:
            if isinstance(op, list) and op and isinstance(op[0], str):
                self.ops[op[0]] = self.ops.get(op[0], 0) + 1
        deadline = self.loop.time() + self.timeout
        try:
            sequenced = await self._via_sequencer(ops, deadline)
            if sequenced is not None:
                results, revision = sequenced
            else:
                results, revision = await self.committer.submit(ops, deadline)
            await self._applied(revision, deadline)
        except EtcdUnavailable as exc:
            self.failures += 1
            raise StateUnavailable(f"etcd: {exc}") from None
        except StateError:
            self.failures += 1
            raise
        return results

    # -- through the sequencer ---------------------------------------------------------
    def on_sequencer(self, gateway_id: str, msg: dict[str, Any]) -> None:
        """From a gateway link: a claim (SEQUENCER) or an answer (STATE_ACK)."""
        if msg["k"] == wire.STATE_ACK:
            fut = self._asked.pop(msg["rid"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            return
        token = msg["token"]
        current = self.sequencer
        if token < 0:  # it stepped down
            if current is not None and current[0] == gateway_id:
                self.sequencer = None
        elif current is None or token > current[1]:
            # The newest claim (the highest token) wins: an older sequencer's commits
            # fail its fence anyway.
            log.info("state writes go through the sequencer, gateway %s", gateway_id)
            self.sequencer = (gateway_id, token)

    def on_gateway_gone(self, gateway_id: str) -> None:
        if self.sequencer is not None and self.sequencer[0] == gateway_id:
            self.sequencer = None
        for rid, fut in list(self._asked.items()):
            if not fut.done() and getattr(fut, "gateway", None) == gateway_id:
                fut.set_exception(EtcdUnavailable(f"gateway {gateway_id} left"))
                self._asked.pop(rid, None)

    async def _via_sequencer(self, ops: list[list[Any]], deadline: float
                             ) -> tuple[list[Any], int] | None:
        """The batch committed by the sequencer; None if there is none to ask, or it
        says it is no longer one (then nothing was applied)."""
        sequencer = self.sequencer
        link = self.links.get(sequencer[0]) if sequencer is not None else None
        if sequencer is None or link is None or not link.welcomed or link.gone:
            return None
        self._rid += 1
        rid = self._rid
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        fut.gateway = sequencer[0]  # type: ignore[attr-defined]
        self._asked[rid] = fut
        link.post(wire.envelope(wire.STATE_OP, id=self.worker_id, rid=rid, ops=ops,
                                t=max(0.0, deadline - self.loop.time())))
        try:
            answer = await asyncio.wait_for(fut, max(0.0, deadline - self.loop.time()))
        except TimeoutError:
            # Sent, unanswered: it may have been applied. Not tried again.
            raise EtcdUnavailable("the sequencer did not answer in time") from None
        finally:
            self._asked.pop(rid, None)
        if answer.get("ok"):
            self.sequenced += 1
            return answer.get("results", []), int(answer.get("seq", 0))
        if answer.get("not_leader"):
            if self.sequencer == sequencer:
                self.sequencer = None
            return None
        if answer.get("unavailable"):
            raise EtcdUnavailable(str(answer.get("error", "the sequencer has no quorum")))
        raise StateError(str(answer.get("error", "refused")))

    async def _applied(self, revision: int, deadline: float) -> None:
        """Wait until the watch has brought the replica to `revision`. A watch that
        lags a committed revision by WATCH_LAG is on a member that stalls without
        saying so (cut off from the others): it is moved to another member."""
        lag_until = self.loop.time() + WATCH_LAG
        while self.replica.seq < revision:
            now = self.loop.time()
            if now >= deadline:
                raise EtcdUnavailable(f"the watch did not bring revision {revision} in time")
            if now >= lag_until and self._watch_task is not None and \
                    now - self._watch_began >= WATCH_LAG and not self._watch_task.done():
                log.warning("the state watch lags revision %d (at %d) on %s; moving it",
                            revision, self.replica.seq, self.watch_session.endpoint)
                self._watch_task.cancel()
                lag_until = now + WATCH_LAG
            woken: asyncio.Future[None] = self.loop.create_future()
            self._waits += 1
            heapq.heappush(self._waiting, (revision, self._waits, woken))
            timer = self.loop.call_at(min(deadline, lag_until), _wake, woken)
            await woken
            timer.cancel()

    # -- the replica -----------------------------------------------------------------
    async def _follow(self) -> None:
        fresh = True
        while True:
            try:
                if fresh:
                    await self._snapshot()
                    fresh = False
                self._watch_task = self.loop.create_task(self._watch())
                self._watch_began = self.loop.time()
                try:
                    await self._watch_task
                except asyncio.CancelledError:
                    if self._watch_task.cancelled() and not self._closing_now:
                        # Cancelled by _applied: its member lags. Go where this
                        # worker's writes go, if elsewhere (that member answered);
                        # else (the same one, or writes go through the sequencer)
                        # to the next member.
                        if self.watch_session.index != self.session.index:
                            self.watch_session.follow(self.session)
                        else:
                            self.watch_session.rotate("the state watch lags")
                        continue
                    raise
            except aetcd.exceptions.RevisionCompactedError:
                log.warning("state revision %d is compacted in etcd; reading afresh",
                            self.replica.seq)
                fresh = True
            except Exception as exc:
                log.warning("etcd: state watch broke (%r); resuming at revision %d", exc,
                            self.replica.seq)
                self.watch_session.rotate(exc)
                await asyncio.sleep(0.1)

    async def _snapshot(self) -> None:
        deadline = self.loop.time() + self.timeout
        listing = await self.watch_session.call(lambda c: c.get_prefix(self.prefix),
                                                deadline)
        revision = int(listing.header.revision)
        self.replica.reset(revision)
        for kv in listing:
            self.replica.put(kv.key[len(self.prefix):].decode(errors="replace"), kv.value,
                             kv.mod_revision)
        self.resyncs += 1
        log.info("state snapshot from etcd: %d keys at revision %d", len(self.replica.data),
                 revision)
        self._advance(revision)
        self.synced.set()

    async def _watch(self) -> None:
        session = self.watch_session
        client = await asyncio.wait_for(session.client(), session.attempt)
        events: asyncio.Queue[Any] = asyncio.Queue()
        end = self.prefix[:-1] + bytes([self.prefix[-1] + 1])
        watch = await asyncio.wait_for(client._watcher.add_callback(
            self.prefix, events.put, range_end=end, start_revision=self.replica.seq + 1),
            session.attempt)
        try:
            pending: list[Any] = []
            while True:
                event = await events.get()
                if isinstance(event, Exception):
                    raise event
                pending.append(event)
                # All events of one response are queued together: once the queue is
                # empty, a revision's transaction is whole; apply it at once, so a
                # reader never sees half a batch.
                if events.empty():
                    self._apply(pending)
                    pending = []
        finally:
            # Not awaited: this runs on cancellation too, and a stalled member would
            # hold the cancellation up.
            self._stopping_watch = asyncio.ensure_future(stop_watch(client, watch.watch_id))

    def _apply(self, events: list[Any]) -> None:
        revision = self.replica.seq
        for event in events:
            kv = event.kv
            key = kv.key[len(self.prefix):].decode(errors="replace")
            if event.kind == "PUT":
                self.replica.put(key, kv.value, kv.mod_revision)
            else:
                self.replica.delete(key)
            revision = max(revision, int(kv.mod_revision))
        self._advance(revision)

    def _advance(self, revision: int) -> None:
        self.replica.seq = seq = max(self.replica.seq, revision)
        waiting = self._waiting
        while waiting and waiting[0][0] <= seq:
            _wake(heapq.heappop(waiting)[2])

    def close(self) -> None:
        self._closing_now = True
        if self._task is not None:
            self._task.cancel()
        self._closing = self.loop.create_task(self._close_sessions())

    async def _close_sessions(self) -> None:
        await self.session.close()
        await self.watch_session.close()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
