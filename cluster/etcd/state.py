"""The worker's shared state on etcd: a replica fed by a watch, writes as transactions.

The mapping
-----------
- A key `k` is `/NAME/s/k`; its value is msgpack `[value, expires_at]` (0: never).
- The replica's sequence number is etcd's revision. It is filled by reading the
  prefix at revision R, then follows a watch from R + 1, which etcd delivers
  complete and in order. A watch that breaks (the member died, lost its leader, or
  the revision was compacted) is resumed from the replica's revision on another
  member; if that revision is compacted, the replica is read afresh.
- A batch of operations (`set`, `del`, `incr`, `cas`, `setdefault`, with TTLs) is
  computed with the coordinator's own rules (`StateStore.apply`) on the values the
  replica holds, then committed as one etcd transaction that compares each key's
  `mod_revision` with the one computed on. If another writer got there first, the
  transaction's failure branch returns the keys' current values and the batch is
  computed again on them: compare-and-set, atomic for the whole batch.
- Each transaction also writes a marker key of its own (`/NAME/w/...`, on a short
  lease) and requires it absent: a transaction whose answer was lost (its member
  failed mid-call) and that is tried again on another member cannot apply twice.
- A key with a TTL also gets an etcd lease (the TTL rounded up, plus a second),
  which removes it; readers hide it from its expiry on, as with the coordinator.
- The handler's call returns once the transaction is committed (etcd has it on a
  quorum's disks) and the replica has applied its revision: it reads its writes.
- No answer from a quorum within `--state-timeout`: `StateUnavailable` (503).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aetcd
import msgpack  # type: ignore[import-untyped]

from cluster.coordinator.store import StateStore, StoreLimits
from cluster.errors import EtcdUnavailable, StateError, StateUnavailable
from cluster.etcd.session import EtcdSession, parse_backend, stop_watch
from cluster.plumbing.config import WorkerConfig
from cluster.worker.replica import Replica, ReplicaReads

log = logging.getLogger("cluster.etcd.state")

WATCH_LAG = 0.5  # seconds a committed revision may take to come through the watch
MARKER_TTL = 60  # seconds a group's marker lives (a call is retried for --state-timeout)
MAX_GROUP = 256  # batches in one transaction (etcd takes at most 10,000 operations)



class EtcdReplica(Replica):
    """The worker's copy, at an etcd revision; each key's mod_revision kept beside."""

    def __init__(self) -> None:
        super().__init__()
        self.revisions: dict[str, int] = {}

    def reset(self, revision: int) -> None:
        self.data = {}
        self.revisions = {}
        self.seq = revision
        self.epoch = "etcd"

    def put(self, key: str, raw: bytes, revision: int) -> None:
        try:
            value, expires = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            log.warning("state key %r holds something that is not ours; ignored", key)
            return
        self.data[key] = (value, expires)
        self.revisions[key] = revision

    def delete(self, key: str) -> None:
        self.data.pop(key, None)
        self.revisions.pop(key, None)


@dataclass
class Batch:
    ops: list[list[Any]]
    deadline: float  # loop time
    done: asyncio.Future[tuple[list[Any], int]]  # results and the commit's revision


def changes_of(store: StateStore, known: dict[str, tuple[Any, int]]) -> list[list[Any]]:
    """What the group changed: [key, value or None, expires] for each key it touched."""
    changes = []
    for key, (before, _rev) in known.items():
        after = store.data.get(key)
        if after != before:
            changes.append([key, None, 0] if after is None else [key, after[0], after[1]])
    return changes


class EtcdState(ReplicaReads):
    """What the worker uses of `StateClient`, on etcd (see the module's text)."""

    replica: EtcdReplica

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
        self.replica = EtcdReplica()
        self.loop_thread = threading.get_ident()
        self.synced = asyncio.Event()
        self.resyncs = 0
        self.ops: dict[str, int] = {}
        self.failures = 0
        self.conflicts = 0  # batches computed again: another writer was first
        self.limits = StoreLimits()
        self._advanced = asyncio.Event()  # the replica's revision moved
        self._queue: list[Batch] = []  # batches waiting for the next transaction
        self.writer_id = uuid.uuid4().hex[:12]  # names this client's group markers
        self._groups = 0
        self._marker: aetcd.Lease | None = None
        self._marker_at = 0.0
        self._committer: asyncio.Task[None] | None = None
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

    async def acall(self, ops: list[list[Any]]) -> list[Any]:
        for op in ops:
            if isinstance(op, list) and op and isinstance(op[0], str):
                self.ops[op[0]] = self.ops.get(op[0], 0) + 1
        deadline = self.loop.time() + self.timeout
        done: asyncio.Future[tuple[list[Any], int]] = self.loop.create_future()
        self._queue.append(Batch(ops, deadline, done))
        if self._committer is None or self._committer.done():
            self._committer = self.loop.create_task(self._commit_queued())
        try:
            results, revision = await done
            await self._applied(revision, deadline)
        except EtcdUnavailable as exc:
            self.failures += 1
            raise StateUnavailable(f"etcd: {exc}") from None
        except StateError:
            self.failures += 1
            raise
        return results

    # -- writes --------------------------------------------------------------------
    async def _commit_queued(self) -> None:
        """Group commit: every batch queued while a transaction was out goes in the
        next one. A worker's concurrent writes then never lose to each other (only
        to other workers), and a hot key costs one round trip per group, not per
        write. The group's batches are computed in their order, as the coordinator
        applies them."""
        while self._queue:
            group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
            try:
                outcomes, revision = await self._commit(group)
            except EtcdUnavailable as exc:
                for batch in group:
                    if not batch.done.done():
                        batch.done.set_exception(exc)
                continue
            for batch, outcome in zip(group, outcomes, strict=True):
                if batch.done.done():
                    continue
                if isinstance(outcome, StateError):
                    batch.done.set_exception(outcome)
                else:
                    batch.done.set_result((outcome, revision))

    async def _commit(self, group: list[Batch]) -> tuple[list[list[Any] | StateError], int]:
        deadline = min(batch.deadline for batch in group)
        keys = sorted({op[1] for batch in group for op in batch.ops
                       if isinstance(op, list) and len(op) > 1 and isinstance(op[1], str)})
        # What the group is computed on: the replica's values, then etcd's on conflict.
        known = {k: (self.replica.data.get(k), self.replica.revisions.get(k, 0)) for k in keys}
        self._groups += 1
        marker = self.target.prefix + f"w/{self.writer_id}/{self._groups}".encode()
        tried: dict[int, list[list[Any] | StateError]] = {}  # attempt -> its outcomes
        attempt = 0
        while True:
            attempt += 1
            store = StateStore(self.limits)
            store.data = {k: entry for k, (entry, _rev) in known.items() if entry is not None}
            now = time.time()
            outcomes: list[list[Any] | StateError] = []
            for batch in group:
                before = dict(store.data)  # the group's few keys
                try:
                    results, _changes = store.apply(batch.ops, now)
                    self._check_key_count(changes_of(store, known))
                    outcomes.append(results)
                except StateError as exc:
                    store.data = before  # a refused batch changes nothing
                    outcomes.append(exc)
            changes = changes_of(store, known)
            tried[attempt] = outcomes
            succeeded, responses, committed = await self._transaction(
                known, changes, marker, attempt, deadline)
            if succeeded:
                return outcomes, _revision(responses) or self.replica.seq
            if committed is not None:
                # An earlier attempt of this group did commit, though its answer was
                # lost (a member that failed mid-call): its outcomes are the true ones.
                done_attempt, revision = committed
                return tried[done_attempt], revision
            self.conflicts += 1
            # Lost to another worker's write: computed again at once on the values the
            # failed transaction returned (a pause would only make them stale).
            if self.loop.time() >= deadline:
                raise EtcdUnavailable(f"{attempt} attempts lost to other writers")
            known = {k: (None, 0) for k in keys}
            for key, found in zip(keys, responses[1:], strict=True):
                for raw, meta in found:
                    value, expires = msgpack.unpackb(raw, raw=False, strict_map_key=False)
                    known[key] = ((value, expires), int(meta.mod_revision))

    def _check_key_count(self, changes: list[list[Any]]) -> None:
        new = sum(1 for k, v, _ in changes if v is not None and k not in self.replica.data)
        if new and len(self.replica.data) + new > self.limits.max_keys:
            raise StateError(f"the store holds at most {self.limits.max_keys} keys")

    async def _transaction(self, known: dict[str, tuple[Any, int]], changes: list[list[Any]],
                           marker: bytes, attempt: int, deadline: float
                           ) -> tuple[bool, list[Any], tuple[int, int] | None]:
        """One attempt: commit `changes` if every key is as `known` and the group's
        `marker` is absent, writing the marker (value: the attempt) with them. A call
        that fails mid-way is tried again on another member (session.call): if the
        first try did commit, the marker makes the second fail, and the failure names
        the attempt that committed and its revision (third item). Without the marker,
        that second try would compute the batch again on the new values: a write
        applied twice for one acknowledgement."""
        now = time.time()
        longest = max((exp - now for _, v, exp in changes if v is not None and exp), default=0)

        async def run(client: aetcd.Client) -> tuple[bool, list[Any], tuple[int, int] | None]:
            tx = client.transactions
            lease = await client.lease(math.ceil(longest) + 1) if longest > 0 else None
            compare = [tx.create(marker) == 0]
            compare += [tx.mod(self._key(k)) == rev for k, (_, rev) in known.items()]
            success = [tx.put(marker, str(attempt).encode(),
                              lease=await self._marker_lease(client))]
            for key, value, expires in changes:
                if value is None:
                    success.append(tx.delete(self._key(key)))
                else:
                    raw = msgpack.packb([value, expires], use_bin_type=True)
                    success.append(tx.put(self._key(key), raw,
                                          lease=lease if expires else None))
            failure = [tx.get(marker), *(tx.get(self._key(k)) for k in known)]
            succeeded, responses = await client.transaction(compare, success, failure)
            committed = None
            if not succeeded:
                for raw, meta in responses[0]:
                    committed = (int(raw), int(meta.mod_revision))
            return bool(succeeded), list(responses), committed

        return await self.session.call(run, deadline)

    async def _marker_lease(self, client: aetcd.Client) -> aetcd.Lease:
        """A lease for the group markers: they need to live only as long as a call
        may be retried; a new one every MARKER_TTL / 2 seconds."""
        now = self.loop.time()
        if self._marker is None or now - self._marker_at > MARKER_TTL / 2:
            self._marker = await client.lease(MARKER_TTL)
            self._marker_at = now
        return self._marker

    def _key(self, key: str) -> bytes:
        return self.prefix + key.encode()

    async def _applied(self, revision: int, deadline: float) -> None:
        """Wait until the watch has brought the replica to `revision`. A watch that
        lags a committed revision by WATCH_LAG is on a member that stalls without
        saying so (cut off from the others): it is moved to another member."""
        lag_until = self.loop.time() + WATCH_LAG
        while self.replica.seq < revision:
            self._advanced.clear()
            now = self.loop.time()
            if now >= deadline:
                raise EtcdUnavailable(f"the watch did not bring revision {revision} in time")
            if now >= lag_until and self._watch_task is not None and \
                    now - self._watch_began >= WATCH_LAG and not self._watch_task.done():
                log.warning("the state watch lags revision %d (at %d); moving it to %s",
                            revision, self.replica.seq, self.session.endpoint)
                self._watch_task.cancel()
                lag_until = now + WATCH_LAG
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(),
                                       min(deadline, lag_until) - now)

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
                        # Cancelled by _applied: its member lags. Go where the
                        # writes go: that member just answered.
                        self.watch_session.follow(self.session)
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
        self.replica.seq = max(self.replica.seq, revision)
        self._advanced.set()

    def close(self) -> None:
        self._closing_now = True
        if self._task is not None:
            self._task.cancel()
        self._closing = self.loop.create_task(self._close_sessions())

    async def _close_sessions(self) -> None:
        await self.session.close()
        await self.watch_session.close()


def _revision(responses: list[Any]) -> int:
    """The revision a successful transaction committed at (0 if it changed nothing)."""
    for response in responses:
        kind = response.WhichOneof("response") if hasattr(response, "WhichOneof") else None
        if kind:
            return int(getattr(response, kind).header.revision)
    return 0
