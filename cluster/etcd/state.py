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

from cluster.coordinator.store import StoreLimits
from cluster.errors import EtcdUnavailable, StateError, StateUnavailable
from cluster.etcd.commits import Committer, KnownValues
from cluster.etcd.session import EtcdSession, parse_backend, prefix_end, stop_watch
from cluster.plumbing import wire
from cluster.plumbing.config import WorkerConfig
from cluster.worker.replica import ReplicaReads
from cluster.worker.threadpool import wait_lent

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
        self.committer = Committer(loop, self.session, self.target, self.replica,
                                   StoreLimits.of(config))
        # The elected sequencer, as its claims say (gateway id, fencing token), and the
        # links to the gateways (the worker's own dict): set by the worker.
        self.sequencer: tuple[str, int] | None = None
        self.links: Mapping[str, GatewayRoute] = {}
        self.sequenced = 0  # batches committed by the sequencer
        # Batches for the sequencer, gathered through one turn of the loop and sent
        # together (_send_batches); then the messages sent and not yet answered.
        self._outbox: list[tuple[list[list[Any]], Outcome]] = []
        self._outbox_deadline = 0.0
        self._asked: dict[int, Asked] = {}
        self._rid = 0
        self.worker_id = ""
        # Calls waiting for the replica to reach a revision: (revision, n, future). A
        # future each, woken by the watch or a timer: no task per call.
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waits = 0
        self.watch_waits = 0  # calls that found the replica behind their revision
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
            return wait_lent(future, self.timeout + 1.0)
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
            self._answered(msg)
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
        for rid, asked in list(self._asked.items()):
            if asked.sequencer[0] == gateway_id:
                del self._asked[rid]
                asked.settle_all(wire.UNAVAILABLE, f"gateway {gateway_id} left")

    def _route(self) -> tuple[tuple[str, int], GatewayRoute] | None:
        """The sequencer and the link to it, if there is one to ask."""
        sequencer = self.sequencer
        link = self.links.get(sequencer[0]) if sequencer is not None else None
        if sequencer is None or link is None or not link.welcomed or link.gone:
            return None
        return sequencer, link

    async def _via_sequencer(self, ops: list[list[Any]], deadline: float
                             ) -> tuple[list[Any], int] | None:
        """The batch committed by the sequencer; None if there is none to ask, or it
        says it is no longer one (then nothing was applied). Sent with the other
        batches of this turn of the loop, as one message."""
        if self._route() is None:
            return None
        outcome: Outcome = self.loop.create_future()
        if not self._outbox:
            self.loop.call_soon(self._send_batches)
            self._outbox_deadline = deadline  # the first is the soonest
        self._outbox.append((ops, outcome))
        code, detail, revision = await outcome
        if code == wire.COMMITTED:
            self.sequenced += 1
            return detail, revision
        if code == wire.NOT_SEQUENCER:
            return None
        if code == wire.REFUSED:
            raise StateError(str(detail))
        raise EtcdUnavailable(str(detail))

    def _send_batches(self) -> None:
        calls, self._outbox = self._outbox, []
        route = self._route()
        if route is None:  # the sequencer left in this turn: nothing was sent
            for _ops, outcome in calls:
                _settle(outcome, wire.NOT_SEQUENCER, "", 0)
            return
        sequencer, link = route
        self._rid += 1
        left = max(0.0, self._outbox_deadline - self.loop.time())
        asked = Asked(sequencer, [outcome for _ops, outcome in calls])
        # Sent, unanswered in time: it may have been applied. Not tried again.
        asked.timer = self.loop.call_later(left, self._unanswered, self._rid)
        self._asked[self._rid] = asked
        link.post(wire.envelope(wire.STATE_BATCHES, id=self.worker_id, rid=self._rid,
                                batches=[ops for ops, _outcome in calls], t=left))

    def _unanswered(self, rid: int) -> None:
        asked = self._asked.pop(rid, None)
        if asked is not None:
            asked.settle_all(wire.UNAVAILABLE, "the sequencer did not answer in time")

    def _answered(self, msg: dict[str, Any]) -> None:
        asked = self._asked.pop(msg["rid"], None)
        if asked is None:
            return  # given up on already
        outcomes = msg.get("outcomes")
        if msg["ok"] and isinstance(outcomes, list) and \
                len(outcomes) == len(asked.outcomes) and isinstance(msg.get("seq"), int):
            asked.settle(outcomes, msg["seq"])
        elif msg.get("not_leader"):
            asked.settle_all(wire.NOT_SEQUENCER, "")
        elif msg.get("unavailable"):
            asked.settle_all(wire.UNAVAILABLE, str(msg.get("error", "no quorum")))
        elif msg["ok"]:
            log.warning("an answer from the sequencer without an outcome for each batch")
            asked.settle_all(wire.UNAVAILABLE, "the sequencer's answer is malformed")
        else:
            asked.settle_all(wire.REFUSED, str(msg.get("error", "refused")))
        if asked.deposed and self.sequencer == asked.sequencer:
            self.sequencer = None

    async def _applied(self, revision: int, deadline: float) -> None:
        """Wait until the watch has brought the replica to `revision`. A watch that
        lags a committed revision by WATCH_LAG is on a member that stalls without
        saying so (cut off from the others): it is moved to another member."""
        if self.replica.seq < revision:
            self.watch_waits += 1
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
        watch = await asyncio.wait_for(client._watcher.add_callback(
            self.prefix, events.put, range_end=prefix_end(self.prefix),
            start_revision=self.replica.seq + 1),
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


# A batch's outcome from the sequencer: (wire.COMMITTED or another code, the results or
# why not, the revision to wait for).
Outcome = asyncio.Future[tuple[int, Any, int]]


class Asked:
    """One STATE_BATCHES sent to the sequencer: the batches' outcomes to settle."""

    def __init__(self, sequencer: tuple[str, int], outcomes: list[Outcome]) -> None:
        self.sequencer = sequencer  # (gateway id, token) it was sent to
        self.outcomes = outcomes
        self.timer: asyncio.TimerHandle | None = None
        self.deposed = False  # it said it is no longer the sequencer

    def settle(self, answers: list[Any], revision: int) -> None:
        """The sequencer's outcome for each batch, in order."""
        if self.timer is not None:
            self.timer.cancel()
        for outcome, answer in zip(self.outcomes, answers, strict=True):
            if type(answer) is list and len(answer) == 2 and type(answer[0]) is int:
                code, detail = answer
            else:
                code, detail = wire.UNAVAILABLE, "the sequencer's answer is malformed"
            self.deposed = self.deposed or code == wire.NOT_SEQUENCER
            _settle(outcome, code, detail, revision)

    def settle_all(self, code: int, detail: str) -> None:
        """The same outcome for every batch (the message as a whole was answered)."""
        self.settle([[code, detail]] * len(self.outcomes), 0)


def _settle(outcome: Outcome, code: int, detail: Any, revision: int) -> None:
    if not outcome.done():
        outcome.set_result((code, detail, revision))


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
