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
  token, when elected, at each poll and to each worker that says hello. A worker
  follows the highest token it was told (cluster/etcd/state.py).
- **Commits.** The sequencer computes the batches on the values it knows (those it
  wrote or read; an unknown key is read from etcd by the first transaction's failure
  branch) and commits them in groups, each transaction also comparing its key's
  create revision with its token. A sequencer that lost the election cannot commit
  anything: its transactions fail as a whole, and it tells the workers "not the
  sequencer", which then commit those batches themselves. A write by anyone else
  (a worker committing directly meanwhile) only fails a compare, as between
  workers: the group is computed again on etcd's values.
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

from cluster.errors import EtcdUnavailable, SequencerDeposed, StateError
from cluster.etcd.commits import Committer, Fence, KnownValues
from cluster.etcd.session import EtcdSession
from cluster.plumbing import wire

if TYPE_CHECKING:
    from cluster.etcd.membership import EtcdMembership

log = logging.getLogger("cluster.etcd.sequencer")

MAX_KNOWN = 100_000  # keys whose values the sequencer keeps; older ones are read again


class WorkerPosts(Protocol):
    """What the sequencer needs of the gateway's way to its workers (the gateway's
    `Dispatcher` is it): the linked ones, and a message to one."""

    def live_workers(self) -> list[tuple[bytes, str]]: ...

    def post_to(self, ident: bytes, msg: dict[str, Any]) -> None: ...


class Sequencer:
    def __init__(self, loop: asyncio.AbstractEventLoop, gateway_id: str,
                 membership: EtcdMembership, dispatcher: WorkerPosts, timeout: float) -> None:
        self.loop = loop
        self.gateway_id = gateway_id
        self.membership = membership
        self.dispatcher = dispatcher
        self.timeout = timeout  # the election's calls; a batch comes with its own
        target = membership.target
        self.key = target.prefix + b"sequencer"
        self.session = EtcdSession(target, timeout)
        self.known = KnownValues()
        self.committer = Committer(loop, self.session, target, self.known, count_keys=False,
                                   fence=self._fence)
        self.committer.on_committed = self._remember
        self.committer.on_seen = self._seen
        self.token: int | None = None  # our key's create revision, while we lead
        self.interval = max(0.2, membership.ttl / 4)  # how often the election is looked at
        self.elections = 0
        self.batches = 0
        self.refused = 0  # batches answered "not the sequencer"
        self._task: asyncio.Task[None] | None = None
        self._answers: set[asyncio.Future[Any]] = set()

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
            await asyncio.sleep(self.interval)

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
        self._claim()

    def _claim(self) -> None:
        """Tell every linked worker (again): cheap, and it heals any lost claim."""
        for ident, _name in self.dispatcher.live_workers():
            self.greet(ident)

    def greet(self, ident: bytes) -> None:
        if self.token is not None:
            self.dispatcher.post_to(ident, wire.envelope(wire.SEQUENCER, token=self.token))

    def _fence(self) -> Fence:
        # -1 matches no key: a sequencer that lost commits nothing.
        return (self.key, self.token if self.token is not None else -1)

    # -- the commits ---------------------------------------------------------------
    def on_op(self, peer: bytes, msg: dict[str, Any]) -> None:
        rid, ops = msg["rid"], msg["ops"]
        if self.token is None:
            self.refused += 1
            self.dispatcher.post_to(peer, wire.envelope(wire.STATE_ACK, rid=rid, ok=False,
                                                        not_leader=True))
            return
        self.batches += 1
        # The worker's time left (its --state-timeout): an answer after it is useless.
        left = msg.get("t")
        left = min(float(left), 60.0) if isinstance(left, (int, float)) and left > 0 else 3.0
        done = self.committer.submit(ops, self.loop.time() + left)
        self._answers.add(done)
        done.add_done_callback(lambda fut: self._answer(peer, rid, fut))

    def _answer(self, peer: bytes, rid: int, done: asyncio.Future[tuple[list[Any], int]]
                ) -> None:
        self._answers.discard(done)
        if done.cancelled():
            return
        exc = done.exception()
        if exc is None:
            results, revision = done.result()
            env = wire.envelope(wire.STATE_ACK, rid=rid, ok=True, results=results,
                                seq=revision)
        elif isinstance(exc, SequencerDeposed):
            self.refused += 1
            env = wire.envelope(wire.STATE_ACK, rid=rid, ok=False, not_leader=True)
        elif isinstance(exc, EtcdUnavailable):
            env = wire.envelope(wire.STATE_ACK, rid=rid, ok=False, unavailable=True,
                                error=str(exc))
        elif isinstance(exc, StateError):
            env = wire.envelope(wire.STATE_ACK, rid=rid, ok=False, error=str(exc))
        else:
            log.error("sequencer: a commit failed: %r", exc)
            env = wire.envelope(wire.STATE_ACK, rid=rid, ok=False, unavailable=True,
                                error="the sequencer failed")
        self.dispatcher.post_to(peer, env)

    def _remember(self, changes: list[list[Any]], revision: int) -> None:
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


async def _resign(client: aetcd.Client, key: bytes, token: int) -> None:
    tx = client.transactions
    await client.transaction([tx.create(key) == token], [tx.delete(key)], [])
