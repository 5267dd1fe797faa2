"""State writes on etcd: batches of operations committed as transactions, in groups.

- A batch (`set`, `del`, `incr`, `cas`, `setdefault`, with TTLs) is computed with the
  coordinator's own rules (`StateStore.apply`) on the values known for its keys
  (`known`: a worker's replica, or the sequencer's cache), then committed as one
  transaction that compares each key's `mod_revision` with the one computed on. If
  another writer got there first, the transaction's failure branch returns the
  keys' current values and the group is computed again on them: compare-and-set,
  atomic for the whole batch.
- Group commit: every batch queued while a transaction is out goes into the next
  one, computed in order. A writer's own concurrent batches then never lose to each
  other, and a hot key costs one round trip per group, not per write.
- Each transaction also writes a marker key of its own (`/NAME/w/...`, on a short
  lease) and requires it absent: a transaction whose answer was lost (its member
  failed mid-call) and that is tried again on another member cannot apply twice.
- A key with a TTL also gets an etcd lease (the TTL rounded up, plus a second),
  which removes it; readers hide it from its expiry on, as with the coordinator.
- A `fence` (a key and its create revision) is compared too: the sequencer's
  leadership (cluster/etcd/sequencer.py). A group refused by it was not applied.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aetcd
import msgpack  # type: ignore[import-untyped]

from cluster.coordinator.store import StateStore, StoreLimits
from cluster.errors import EtcdUnavailable, SequencerDeposed, StateError
from cluster.etcd.session import EtcdSession, EtcdTarget
from cluster.worker.replica import Replica

log = logging.getLogger("cluster.etcd.state")

MARKER_TTL = 60  # seconds a group's marker lives (a call is retried for --state-timeout)
MAX_GROUP = 256  # batches in one transaction
# Keys one transaction touches at most: etcd refuses more than --max-txn-ops (128 by
# default) operations in one, and each key is a compare and a put.
MAX_KEYS = 60

Fence = tuple[bytes, int]  # a key that must have this create revision


class KeyCount(Protocol):
    """Who knows how many keys the store holds, for --max-keys: a worker's replica
    (every key), or the sequencer (a count it keeps). None: not known yet."""

    def key_count(self) -> int | None: ...


class KnownValues(Replica):
    """Values at etcd revisions: each key's mod_revision kept beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.revisions: dict[str, int] = {}

    def key_count(self) -> int | None:
        return len(self.data)  # a replica: every key

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


def keys_of(ops: list[list[Any]]) -> set[str]:
    return {op[1] for op in ops if isinstance(op, list) and len(op) > 1 and
            isinstance(op[1], str)}


class Committer:
    """Group commit of batches onto etcd, computed on `known` (see the module's text).
    `on_committed(changes, revision, keys created less keys deleted)` and
    `on_seen(key, raw or None, mod_revision)` tell the owner of `known` what was
    written and read, if it keeps them itself."""

    def __init__(self, loop: asyncio.AbstractEventLoop, session: EtcdSession,
                 target: EtcdTarget, known: KnownValues, limits: StoreLimits, *,
                 counter: KeyCount | None = None,
                 fence: Callable[[], Fence | None] = lambda: None) -> None:
        self.loop = loop
        self.session = session
        self.prefix = target.prefix + b"s/"
        self.marker_prefix = target.prefix + f"w/{uuid.uuid4().hex[:12]}/".encode()
        self.known = known
        self.counter = counter if counter is not None else known  # for max_keys
        self.fence = fence
        self.limits = limits  # --max-value and --max-keys, as the coordinator's
        self.on_committed: Callable[[list[list[Any]], int, int], None] = lambda *_: None
        self.on_seen: Callable[[str, bytes | None, int], None] = lambda *_: None
        self.conflicts = 0  # groups computed again: another writer was first
        self.groups = 0
        self._queue: list[Batch] = []
        self._task: asyncio.Task[None] | None = None
        self._marker: aetcd.Lease | None = None
        self._marker_at = 0.0

    def submit(self, ops: list[list[Any]], deadline: float
               ) -> asyncio.Future[tuple[list[Any], int]]:
        done: asyncio.Future[tuple[list[Any], int]] = self.loop.create_future()
        self._queue.append(Batch(ops, deadline, done))
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._commit_queued())
        return done

    async def _commit_queued(self) -> None:
        while self._queue:
            group, self._queue = self._take(self._queue)
            try:
                outcomes, revision = await self._commit(group)
            except (EtcdUnavailable, SequencerDeposed) as exc:
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

    @staticmethod
    def _take(queue: list[Batch]) -> tuple[list[Batch], list[Batch]]:
        """The next group: in order, up to MAX_GROUP batches and MAX_KEYS keys."""
        keys: set[str] = set()
        count = 0
        for batch in queue[:MAX_GROUP]:
            more = keys | keys_of(batch.ops)
            if count and len(more) > MAX_KEYS:
                break
            keys = more
            count += 1
        return queue[:count], queue[count:]

    async def _commit(self, group: list[Batch]) -> tuple[list[list[Any] | StateError], int]:
        deadline = min(batch.deadline for batch in group)
        keys = sorted(set().union(*(keys_of(batch.ops) for batch in group)))
        # What the group is computed on: the known values, then etcd's on conflict.
        known = {k: (self.known.data.get(k), self.known.revisions.get(k, 0)) for k in keys}
        self.groups += 1
        marker = self.marker_prefix + str(self.groups).encode()
        fence = self.fence()
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
                    self._check_key_count(changes_of(store, known), known)
                    outcomes.append(results)
                except StateError as exc:
                    store.data = before  # a refused batch changes nothing
                    outcomes.append(exc)
            changes = changes_of(store, known)
            tried[attempt] = outcomes
            succeeded, responses, committed = await self._transaction(
                known, changes, marker, attempt, fence, deadline)
            if succeeded:
                # A group that changed nothing wrote nothing (no new revision): what it
                # read is what the worker's replica must have reached.
                revision = _revision(responses) or \
                    max((rev for _entry, rev in known.values()), default=0)
                self.on_committed(changes, revision, _net_keys(changes, known))
                return outcomes, revision
            if committed is not None:
                # An earlier attempt of this group did commit, though its answer was
                # lost (a member that failed mid-call): its outcomes are the true ones.
                done_attempt, revision = committed
                self.on_committed(changes, revision, _net_keys(changes, known))
                return tried[done_attempt], revision
            found = responses[1:]
            if fence is not None:
                holder = [int(meta.create_revision) for _raw, meta in found[0]]
                if holder != [fence[1]]:
                    raise SequencerDeposed("the sequencer's key is another's now")
                found = found[1:]
            self.conflicts += 1
            # Lost to another writer: computed again at once on the values the failed
            # transaction returned (a pause would only make them stale).
            if self.loop.time() >= deadline:
                raise EtcdUnavailable(f"{attempt} attempts lost to other writers")
            known = {k: (None, 0) for k in keys}
            for key, hits in zip(keys, found, strict=True):
                raw_seen: bytes | None = None
                revision = 0
                for raw, meta in hits:
                    value, expires = msgpack.unpackb(raw, raw=False, strict_map_key=False)
                    known[key] = ((value, expires), int(meta.mod_revision))
                    raw_seen, revision = raw, int(meta.mod_revision)
                self.on_seen(key, raw_seen, revision)

    def _check_key_count(self, changes: list[list[Any]],
                         known: dict[str, tuple[Any, int]]) -> None:
        """As the coordinator: a batch that would take the store past max_keys is
        refused. `known` holds what each key was before the group: the transaction
        compares every one of them, so this count of new keys is exact."""
        new = sum(1 for k, v, _ in changes if v is not None and known[k][0] is None)
        if not new:
            return
        count = self.counter.key_count()
        if count is not None and count + new > self.limits.max_keys:
            raise StateError(f"the store holds at most {self.limits.max_keys} keys")

    async def _transaction(self, known: dict[str, tuple[Any, int]], changes: list[list[Any]],
                           marker: bytes, attempt: int, fence: Fence | None, deadline: float
                           ) -> tuple[bool, list[Any], tuple[int, int] | None]:
        """One attempt: commit `changes` if every key is as `known`, the group's
        `marker` is absent and the fence holds, writing the marker (value: the
        attempt) with them. A call that fails mid-way is tried again on another
        member (session.call): if the first try did commit, the marker makes the
        second fail, and the failure names the attempt that committed and its
        revision (third item). Without the marker, that second try would compute the
        batch again on the new values: a write applied twice for one acknowledgement."""
        now = time.time()
        longest = max((exp - now for _, v, exp in changes if v is not None and exp), default=0)

        async def run(client: aetcd.Client) -> tuple[bool, list[Any], tuple[int, int] | None]:
            tx = client.transactions
            lease = await client.lease(math.ceil(longest) + 1) if longest > 0 else None
            compare = [tx.create(marker) == 0]
            if fence is not None:
                compare.append(tx.create(fence[0]) == fence[1])
            compare += [tx.mod(self._key(k)) == rev for k, (_, rev) in known.items()]
            # Only a group that changes something needs its marker: one that changes
            # nothing may run twice, and its revision would be none of the state's
            # (a worker would wait for its watch to bring it, in vain).
            success = [tx.put(marker, str(attempt).encode(),
                              lease=await self._marker_lease(client))] if changes else []
            for key, value, expires in changes:
                if value is None:
                    success.append(tx.delete(self._key(key)))
                else:
                    raw = msgpack.packb([value, expires], use_bin_type=True)
                    success.append(tx.put(self._key(key), raw,
                                          lease=lease if expires else None))
            failure = [tx.get(marker), *([tx.get(fence[0])] if fence is not None else []),
                       *(tx.get(self._key(k)) for k in known)]
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


def _net_keys(changes: list[list[Any]], known: dict[str, tuple[Any, int]]) -> int:
    """Keys a committed group created less those it deleted."""
    return sum((v is not None) - (known[k][0] is not None) for k, v, _ in changes)


def _revision(responses: list[Any]) -> int:
    """The revision a successful transaction committed at (0 if it changed nothing)."""
    for response in responses:
        kind = response.WhichOneof("response") if hasattr(response, "WhichOneof") else None
        if kind:
            return int(getattr(response, kind).header.revision)
    return 0
