"""The state sequencer on etcd: one gateway, elected, commits every worker's state
batches together.

Why: on etcd each worker commits its own batches by compare-and-set (commits.py).
A key that every worker writes (a counter) then costs each worker a lost race per
round, and the cluster commits a few hundred increments a second where the
coordinator, one process every write passes through, commits thousands. Here one
gateway plays the coordinator's part for writes, while etcd stays the only source
of truth: no consensus code of ours.

- **Election.** Each gateway (unless --no-state-sequencer) tries to create the key
  `/NAME/sequencer` on its membership lease; the one that does is the sequencer.
  The key's create revision is its **fencing token**. When its lease ends (it died,
  was cut off, stopped), etcd deletes the key and the next gateway to look takes it.
- **Claims.** The sequencer tells every worker linked to it that it is one, with its
  token, once elected and its count of keys taken (below), at each poll and to each
  worker that says hello. A worker follows the highest token it was told
  (cluster/etcd/state.py).
- **--max-keys.** A worker committing its own batches counts keys in its replica;
  the sequencer's cache is partial, so it asks etcd for the number of state keys
  (a count, nothing read) when elected and every RECOUNT seconds, and adds what its
  own commits created less what they deleted since that count's revision. Between
  counts it does not see keys that expired or that others wrote: it may refuse a
  new key a little early, never let the store grow past the limit by its own
  writes.
- **Commits.** The sequencer computes the batches on the values it knows (those it
  wrote or read; an unknown key is read from etcd by the first transaction's failure
  branch) and commits them in groups, each transaction also comparing its key's
  create revision with its token. A sequencer that lost the election cannot commit
  anything: its transactions fail as a whole, and it tells the workers "not the
  sequencer", which then commit those batches themselves. A write by anyone else
  (a worker committing directly meanwhile) only fails a compare, as between
  workers: the group is computed again on etcd's values.
- **One message a turn.** A worker sends the batches its handlers made in one turn
  of its loop together (STATE_BATCHES), and gets one answer with an outcome for
  each: a worker with many handlers waiting on state costs the sequencer one
  message in and one out per turn, not one per batch. Each batch stays atomic on
  its own: one refused changes nothing of the others.
- **Answers.** A worker gets the results and the revision, then waits for its own
  replica to reach that revision, as for its own commits: read-your-writes holds.
  A sequencer that does not answer in time (died mid-commit) leaves the batch
  unknown: 503, never a second try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import aetcd
from aetcd import rpc

from cluster.coordinator.store import StoreLimits
from cluster.errors import EtcdUnavailable, SequencerDeposed, StateError
from cluster.etcd.commits import Committer, Fence, KnownValues
from cluster.etcd.session import EtcdSession, prefix_end
from cluster.plumbing import wire
from cluster.plumbing.config import StateLimits

if TYPE_CHECKING:
    from cluster.etcd.membership import EtcdMembership

log = logging.getLogger("cluster.etcd.sequencer")

MAX_KNOWN = 100_000  # keys whose values the sequencer keeps; older ones are read again
# Seconds between counts of the state keys while leading, for --max-keys: what the
# count cannot follow by itself is keys removed by their TTL and writes by others.
RECOUNT = 10.0


class WorkerPosts(Protocol):
    """What the sequencer needs of the gateway's way to its workers (the gateway's
    `Dispatcher` is it): the linked ones, and a message to one."""

    def live_workers(self) -> list[tuple[bytes, str]]: ...

    def post_to(self, ident: bytes, msg: dict[str, Any]) -> None: ...


class Sequencer:
    def __init__(self, loop: asyncio.AbstractEventLoop, gateway_id: str,
                 membership: EtcdMembership, dispatcher: WorkerPosts, timeout: float,
                 limits: StateLimits) -> None:
        self.loop = loop
        self.gateway_id = gateway_id
        self.membership = membership
        self.dispatcher = dispatcher
        self.timeout = timeout  # the election's calls; a batch comes with its own
        target = membership.target
        self.key = target.prefix + b"sequencer"
        self.session = EtcdSession(target, timeout)
        self.known = KnownValues()
        self.committer = Committer(loop, self.session, target, self.known,
                                   StoreLimits.of(limits), counter=self, fence=self._fence)
        self.committer.on_committed = self._remember
        self.committer.on_seen = self._seen
        self.token: int | None = None  # our key's create revision, while we lead
        self.interval = max(0.2, membership.ttl / 4)  # how often the election is looked at
        self.elections = 0
        self.batches = 0
        self.messages = 0  # STATE_BATCHES received: fewer than batches, by how many a turn
        self.refused = 0  # batches answered "not the sequencer"
        # The state keys etcd held at the last count (None: not counted while leading)
        # and our commits since: created less deleted, by revision (Keys).
        self.keys: Keys | None = None
        self._counted_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._answers: set[Answer] = set()  # held until every batch is done

    def start(self) -> None:
        self._task = self.loop.create_task(self._campaign())

    # -- the election ------------------------------------------------------------
    async def _campaign(self) -> None:
        while True:
            await self.membership.registered.wait()
            lease = self.membership.lease
            if lease is not None:
                try:
                    token = await self.session.call(partial(self._stand, lease=lease),
                                                    self.loop.time() + self.timeout)
                except EtcdUnavailable as exc:
                    token = None
                    if self.token is not None:
                        log.warning("sequencer: etcd does not answer (%s); stepping down", exc)
                except Exception as exc:  # never leave the election for good
                    token = None
                    log.error("sequencer: the election failed (%r); stepping down", exc)
                self._lead(token)
                if self.token is not None and (
                        self.keys is None or
                        self.loop.time() - self._counted_at >= RECOUNT):
                    await self._count()
            await asyncio.sleep(self.interval)

    async def _count(self) -> None:
        """Count the state keys (etcd counts; nothing is read), as of a revision: our
        commits after it are added to it."""
        prefix = self.committer.prefix
        # aetcd's get_prefix takes no count_only: its stub is called, as history.py does.
        request = rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True)
        try:
            found = await self.session.call(
                lambda c: c.kvstub.Range(request, timeout=c._timeout, metadata=c.metadata),
                self.loop.time() + self.timeout)
        except EtcdUnavailable as exc:
            log.warning("sequencer: could not count the state keys (%s)", exc)
            return
        first = self.keys is None
        if self.keys is None:
            self.keys = Keys()
        self.keys.counted(int(found.count), int(found.header.revision))
        self._counted_at = self.loop.time()
        if first:
            self._claim()  # only now: a batch is checked against --max-keys from the first

    def key_count(self) -> int | None:
        """For --max-keys (the committer asks): None until counted."""
        return self.keys.now() if self.keys is not None else None

    async def _stand(self, client: aetcd.Client, lease: aetcd.Lease) -> int | None:
        """Take the key if it is free; our token if it is ours, else None."""
        tx = client.transactions
        won, responses = await client.transaction(
            [tx.create(self.key) == 0],
            [tx.put(self.key, self.gateway_id.encode(), lease=lease)], [tx.get(self.key)])
        if won:
            return int(responses[0].response_put.header.revision)
        for raw, meta in responses[0]:
            if raw == self.gateway_id.encode() and int(meta.lease) == int(lease.id):
                return int(meta.create_revision)
        return None

    def _lead(self, token: int | None) -> None:
        if token != self.token:
            if token is not None:
                self.elections += 1
                log.info("this gateway is the state sequencer (token %d)", token)
            else:
                log.info("this gateway is no longer the state sequencer")
            self.token = token
            self.keys = None  # counted again once leading
        self._claim()

    def _claim(self) -> None:
        """Tell every linked worker (again): cheap, and it heals any lost claim."""
        for ident, _name in self.dispatcher.live_workers():
            self.greet(ident)

    @property
    def leading(self) -> bool:
        """Elected, and the keys counted: ready to take batches."""
        return self.token is not None and self.keys is not None

    def greet(self, ident: bytes) -> None:
        if self.leading:
            self.dispatcher.post_to(ident, wire.envelope(wire.SEQUENCER, token=self.token))

    def _fence(self) -> Fence:
        # -1 matches no key: a sequencer that lost commits nothing.
        return (self.key, self.token if self.token is not None else -1)

    # -- the commits ---------------------------------------------------------------
    def on_batches(self, peer: bytes, msg: dict[str, Any]) -> None:
        """A worker's STATE_BATCHES: each batch committed in order (most often all in
        one transaction), then one STATE_ACK with an outcome per batch."""
        rid, batches = msg["rid"], msg["batches"]
        self.messages += 1
        if not self.leading:
            self.refused += len(batches)
            self.dispatcher.post_to(peer, wire.envelope(wire.STATE_ACK, rid=rid, ok=False,
                                                        not_leader=True))
            return
        if not batches or not all(type(ops) is list for ops in batches):
            log.warning("sequencer: batches from worker %s that are not lists; refused",
                        msg["id"])
            self.dispatcher.post_to(peer, wire.envelope(wire.STATE_ACK, rid=rid, ok=False,
                                                        error="batches that are not lists"))
            return
        self.batches += len(batches)
        # The worker's time left (its --state-timeout): an answer after it is useless.
        left = msg.get("t")
        left = min(float(left), 60.0) if isinstance(left, (int, float)) and left > 0 else 3.0
        deadline = self.loop.time() + left
        answer = Answer(self, peer, rid,
                        [self.committer.submit(ops, deadline) for ops in batches])
        self._answers.add(answer)

    def answered(self, answer: Answer) -> None:
        self._answers.discard(answer)
        refused = sum(1 for code, _ in answer.outcomes if code == wire.NOT_SEQUENCER)
        self.refused += refused
        self.dispatcher.post_to(answer.peer, wire.envelope(
            wire.STATE_ACK, rid=answer.rid, ok=True, outcomes=answer.outcomes,
            seq=answer.revision))

    def _remember(self, changes: list[list[Any]], revision: int, net_keys: int) -> None:
        if net_keys and self.keys is not None:
            self.keys.committed(revision, net_keys)
        for key, value, expires in changes:
            if value is None:
                self.known.delete(key)
            else:
                self.known.data[key] = (value, expires)
                self.known.revisions[key] = revision
        self._bound()

    def _seen(self, key: str, raw: bytes | None, revision: int) -> None:
        if raw is None:
            self.known.delete(key)
        else:
            self.known.put(key, raw, revision)
        self._bound()

    def _bound(self) -> None:
        while len(self.known.data) > MAX_KNOWN:  # the oldest first: read again if needed
            self.known.delete(next(iter(self.known.data)))

    # -- the end --------------------------------------------------------------------
    async def close(self) -> None:
        """Step down at once (the next gateway need not wait for our lease), then go."""
        if self._task is not None:
            self._task.cancel()
        if self.token is not None:
            token, self.token = self.token, None
            for ident, _name in self.dispatcher.live_workers():
                self.dispatcher.post_to(ident, wire.envelope(wire.SEQUENCER, token=-1))
            with contextlib.suppress(Exception):
                await self.session.call(lambda c: _resign(c, self.key, token),
                                        self.loop.time() + 1.0)
        await self.session.close()


class Keys:
    """How many state keys etcd holds: a count at a revision, plus what our commits
    created less what they deleted since. A commit may be answered after a count that
    already includes it, so each is kept by its revision until the next count."""

    def __init__(self) -> None:
        self.count = 0
        self.revision = 0
        self.since: list[tuple[int, int]] = []  # (revision, net keys) after the count
        self.added = 0  # their sum

    def counted(self, count: int, revision: int) -> None:
        self.count, self.revision = count, revision
        self.since = [(rev, net) for rev, net in self.since if rev > revision]
        self.added = sum(net for _rev, net in self.since)

    def committed(self, revision: int, net: int) -> None:
        if revision > self.revision:
            self.since.append((revision, net))
            self.added += net

    def now(self) -> int:
        return self.count + self.added


class Answer:
    """One STATE_BATCHES being committed: its batches' outcomes, gathered as each is
    done (a callback each: no task), then sent back together."""

    def __init__(self, sequencer: Sequencer, peer: bytes, rid: int,
                 done: list[asyncio.Future[tuple[list[Any], int]]]) -> None:
        self.sequencer = sequencer
        self.peer = peer
        self.rid = rid
        self.done = done
        self.left = len(done)
        self.revision = 0  # the highest revision among the batches: the worker waits for it
        self.outcomes: list[list[Any]] = []
        for fut in done:
            fut.add_done_callback(self._one_done)

    def _one_done(self, _fut: asyncio.Future[tuple[list[Any], int]]) -> None:
        self.left -= 1
        if self.left:
            return
        for fut in self.done:
            self.outcomes.append(self._outcome(fut))
        self.sequencer.answered(self)

    def _outcome(self, fut: asyncio.Future[tuple[list[Any], int]]) -> list[Any]:
        if fut.cancelled():
            return [wire.UNAVAILABLE, "the sequencer is stopping"]
        exc = fut.exception()
        if exc is None:
            results, revision = fut.result()
            self.revision = max(self.revision, revision)
            return [wire.COMMITTED, results]
        if isinstance(exc, SequencerDeposed):
            return [wire.NOT_SEQUENCER, str(exc)]
        if isinstance(exc, EtcdUnavailable):
            return [wire.UNAVAILABLE, str(exc)]
        if isinstance(exc, StateError):
            return [wire.REFUSED, str(exc)]
        log.error("sequencer: a commit failed: %r", exc)
        return [wire.UNAVAILABLE, "the sequencer failed"]


async def _resign(client: aetcd.Client, key: bytes, token: int) -> None:
    tx = client.transactions
    await client.transaction([tx.create(key) == token], [tx.delete(key)], [])
