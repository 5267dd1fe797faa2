"""Group history on etcd, at a gateway: delivery from a watch, recovery from etcd's
own record of past revisions.

The mapping (the same contract as the coordinator's, docs/websocket.md)
------------------------------------------------------------------------
- A group `g` is one key, `/NAME/h/g`. Each `cluster.publish` is one put to it
  (cluster/etcd/publisher.py); its value is msgpack `[time, data]`.
- The key's **version** counts its puts: 1, 2, 3... with no gap, sequenced by etcd
  itself (no compare-and-set), so it is the message's offset. Publishers on any host
  need not agree on anything.
- The **epoch** is the etcd cluster's id and the key's create revision. Neither ever
  changes while the key exists (we never delete it; a compaction keeps it), so the
  epoch outlives every process of ours and every etcd member. A new etcd cluster, or
  a deleted key, is a new epoch, which clients are told plainly.
- **Delivery**: a gateway watches the keys of the groups it holds, and only those
  (gateway/group_notices.py tells it when a group gets its first member here, or
  loses its last), and hands each put to its members (gateway/ws_history.py). A
  group's watch starts after the revision read when it became held, and the new
  member hears nothing of its join before that read: whatever is published after
  the member could know it joined reaches it. A watch that breaks resumes each
  group from its next revision on another member, so none is skipped.
- **Recovery** from (epoch, offset): the key's current version V says how many
  were missed; the revision at which version offset + 1 was written is found by
  reading the key at past revisions (a binary search: etcd keeps every revision
  until compacted), and a watch from that revision replays the puts up to V. A
  compacted revision, more than --history-size missed, or a first missed message
  older than --history-ttl is `recovered: false`, as on the coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from typing import Any

import aetcd
import aetcd.exceptions
import grpc
import msgpack  # type: ignore[import-untyped]
from aetcd import rpc

from cluster.errors import EtcdUnavailable
from cluster.etcd.session import EtcdSession, EtcdTarget, prefix_end, stop_watch
from cluster.gateway.group_notices import DIRECTORY, GroupNotices
from cluster.gateway.ws_history import GroupFeed

log = logging.getLogger("cluster.etcd.history")

# A watch on a member that is stopped (SIGSTOP) or cut off without losing its leader
# yet goes quiet without an error: the member is asked something this often, and
# a member that does not answer in a third of --peer-expiry has the watch moved.
PROBE_INTERVAL = 0.5


def history_prefix(target: EtcdTarget) -> bytes:
    return target.prefix + b"h/"


def pack(data: Any, now: float) -> bytes:
    return msgpack.packb([now, data], use_bin_type=True)  # type: ignore[no-any-return]


def unpack(raw: bytes) -> tuple[float, Any] | None:
    try:
        at, data = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        return float(at), data
    except (ValueError, TypeError, msgpack.UnpackException):
        return None


def epoch_of(cluster_id: int, create_revision: int) -> str:
    return f"{cluster_id:x}.{create_revision}"


class EtcdHistory:
    """A gateway's feed of numbered group messages from etcd, and its recoveries."""

    def __init__(self, target: EtcdTarget, timeout: float, size: int, ttl: float,
                 feed: GroupFeed, notices: GroupNotices) -> None:
        self.prefix = history_prefix(target)
        self.timeout = timeout  # a recovery's whole deadline
        self.size = size
        self.ttl = ttl
        self.feed = feed  # the gateway's: published messages and recovery answers go there
        self.notices = notices  # answered once the groups they hold are delivered
        # The watch and the recoveries each have a channel: a recovery's rotation
        # must not close the watch under it.
        self.watch_session = EtcdSession(target, timeout)
        self.session = EtcdSession(target, timeout)
        # Group -> the newest revision delivered for it (at first: read when it became
        # held); its watch's id while one runs.
        self.positions: dict[str, int] = {}
        self.watches: dict[str, int] = {}
        self.cluster_id = 0
        self._client: aetcd.Client | None = None  # the running watch's, to add groups to
        self._events: asyncio.Queue[Any] | None = None
        self._lock = asyncio.Lock()  # adding a group's watch, or starting them all
        self._position_set = asyncio.Event()  # a group became held (its position read)
        self.delivered = 0
        self.undecodable = 0
        self.resumes = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._recoveries: set[asyncio.Task[None]] = set()
        self._changes: set[asyncio.Task[None]] = set()
        self._watch_task: asyncio.Task[None] | None = None
        self._stopping_watch: asyncio.Future[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tasks = [loop.create_task(self._follow()), loop.create_task(self._probe())]

    def ask(self, rid: int, group: str, epoch: str, offset: int) -> bool:
        """A recovery's question (gateway/ws_history.py): answered by on_answer."""
        task = asyncio.get_running_loop().create_task(self._recover(rid, group, epoch, offset))
        self._recoveries.add(task)
        task.add_done_callback(self._recoveries.discard)
        return True

    # -- which groups --------------------------------------------------------------
    def groups_changed(self, held: list[str], dropped: list[str], round_: int) -> bool:
        """gateway/group_notices.py: watch the groups held here, and no others."""
        for group in dropped:
            self.positions.pop(group, None)
            watch_id = self.watches.pop(group, None)
            if watch_id is not None and self._client is not None:
                self._spawn(stop_watch(self._client, watch_id))
        if not held:
            return False
        self._spawn(self._hold(held, round_))
        return True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._changes.add(task)
        task.add_done_callback(self._changes.discard)

    async def _hold(self, groups: list[str], round_: int) -> None:
        """Read where each group is now, then watch it from there; answer the round."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        for group in groups:
            try:
                found = await self.session.call(
                    partial(_range, key=self.prefix + group.encode(), revision=0), deadline)
            except EtcdUnavailable as exc:
                log.warning("history: cannot read where group %r is (%s); its watch "
                            "starts when etcd answers", group, exc)
                found = None
            if found is None:
                continue  # the round goes unanswered: released after its time
            self.cluster_id = int(found.header.cluster_id)
            async with self._lock:
                if group in self.positions:
                    continue  # held already (a round before this one)
                self.positions[group] = int(found.header.revision)
                self._position_set.set()
                if self._client is not None and self._events is not None:
                    await self._add_watch(self._client, self._events, group)
        self.notices.answered(DIRECTORY, {"r": round_})

    # -- delivery ---------------------------------------------------------------------
    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self._watch_task = loop.create_task(self._watch())
                await self._watch_task
            except asyncio.CancelledError:
                if self._watch_task is not None and self._watch_task.cancelled() and \
                        not self._closing():
                    self.watch_session.rotate("the history watch went quiet")
                    self.resumes += 1
                    continue
                raise
            except aetcd.exceptions.RevisionCompactedError:
                # What was published meanwhile is gone from etcd: the members here miss
                # it (their next frames skip offsets; a reconnect is told plainly).
                log.error("history watch: a revision is compacted; delivering from now on")
                try:
                    await self._from_now(loop.time() + self.timeout)
                except EtcdUnavailable as exc:
                    log.warning("etcd: cannot read where the groups are (%s)", exc)
                    await asyncio.sleep(0.1)
            except Exception as exc:
                log.warning("etcd: history watch broke (%r); resuming each group at its "
                            "next revision", exc)
                self.watch_session.rotate(exc)
                self.resumes += 1
                await asyncio.sleep(0.1)

    async def _from_now(self, deadline: float) -> None:
        for group in list(self.positions):
            found = await self.session.call(
                partial(_range, key=self.prefix + group.encode(), revision=0), deadline)
            if found is not None and group in self.positions:
                self.positions[group] = int(found.header.revision)

    def _closing(self) -> bool:
        return not self._tasks or self._tasks[0].cancelled() or self._tasks[0].done()

    async def _head(self, client: aetcd.Client) -> Any:
        request = rpc.RangeRequest(key=self.prefix, range_end=prefix_end(self.prefix), limit=1,
                                   keys_only=True)
        return await client.kvstub.Range(request, timeout=client._timeout,
                                         metadata=client.metadata)

    async def _watch(self) -> None:
        session = self.watch_session
        client = await asyncio.wait_for(session.client(), session.attempt)
        events: asyncio.Queue[Any] = asyncio.Queue()
        async with self._lock:
            self.watches.clear()
            for group in list(self.positions):
                await self._add_watch(client, events, group)
            self._client, self._events = client, events
        try:
            while True:
                group, event = await events.get()
                if isinstance(event, Exception):
                    raise event
                self._deliver(group, event)
        finally:
            self._client = self._events = None
            # Not awaited: this runs on cancellation too, and a stalled member would
            # hold the cancellation up.
            for watch_id in list(self.watches.values()):
                self._stopping_watch = asyncio.ensure_future(stop_watch(client, watch_id))
            self.watches.clear()

    async def _add_watch(self, client: aetcd.Client, events: asyncio.Queue[Any],
                         group: str) -> None:
        watch = await asyncio.wait_for(client._watcher.add_callback(
            self.prefix + group.encode(), partial(_tagged, events, group),
            start_revision=self.positions[group] + 1), self.watch_session.attempt)
        self.watches[group] = watch.watch_id

    def _deliver(self, group: str, event: Any) -> None:
        kv = event.kv
        revision = int(kv.mod_revision)
        if revision <= self.positions.get(group, revision):
            return  # a resumed watch's overlap, or a group no longer held
        self.positions[group] = revision
        if event.kind != "PUT":
            return
        found = unpack(kv.value)
        if found is None:
            self.undecodable += 1
            return
        self.delivered += 1
        self.feed.on_message(group, epoch_of(self.cluster_id, int(kv.create_revision)),
                             int(kv.version), found[1])

    async def _probe(self) -> None:
        """Move a watch whose member stopped answering (see PROBE_INTERVAL)."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            task = self._watch_task
            if task is None or task.done() or not self.positions:
                continue
            session = self.watch_session
            try:
                client = await asyncio.wait_for(session.client(), session.attempt)
                await asyncio.wait_for(self._head(client), session.attempt)
            except Exception as exc:  # any failure: the member is not serving
                if task is self._watch_task and not task.done():
                    log.warning("history watch on %s: the member does not answer (%r)",
                                session.endpoint, exc)
                    task.cancel()

    # -- recovery ---------------------------------------------------------------------
    async def _recover(self, rid: int, group: str, epoch: str, offset: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        key = self.prefix + group.encode()
        try:
            # Read after the group's watch position (subscribing joined it): what is
            # published in between is in the answer or comes live, never in neither.
            while group not in self.positions:
                self._position_set.clear()
                await asyncio.wait_for(self._position_set.wait(),
                                       max(0.0, deadline - loop.time()))
            messages, ours, complete = await self._since(key, epoch, offset, deadline)
        except Exception as exc:  # any failure is "not recoverable"
            log.warning("history recovery of %r after %s:%d failed: %r", group, epoch,
                        offset, exc)
            messages, ours, complete = [], "", False
        self.feed.on_answer(rid, ours, messages, complete)

    async def _since(self, key: bytes, epoch: str, offset: int, deadline: float
                     ) -> tuple[list[list[Any]], str, bool]:
        now = await self.session.call(lambda c: _range(c, key, 0), deadline)
        if now is None or not now.kvs:
            return [], "", False  # nothing was ever published to it
        kv = now.kvs[0]
        ours = epoch_of(int(now.header.cluster_id), int(kv.create_revision))
        newest = int(kv.version)
        if epoch != ours or offset > newest or newest - offset > self.size:
            return [], ours, False
        if offset == newest:
            return [], ours, True
        start = await self._revision_of(key, offset + 1, int(kv.create_revision),
                                        int(kv.mod_revision), deadline)
        if start is None:
            return [], ours, False  # compacted away
        messages = await self.session.call(
            lambda c: _replay(c, key, start, offset + 1, newest), deadline)
        if messages is None or len(messages) != newest - offset:
            return [], ours, False
        if time.time() - messages[0][0] > self.ttl:
            return [], ours, False
        return [[o, data] for (_at, data), o in zip(messages, range(offset + 1, newest + 1),
                                                     strict=True)], ours, True

    async def _revision_of(self, key: bytes, version: int, low: int, high: int,
                           deadline: float) -> int | None:
        """The revision at which the key's `version` was written, searched in
        [low, high] (versions only grow with revisions); None if it lies in the
        compacted past."""
        while low <= high:
            middle = (low + high) // 2
            at = await self.session.call(partial(_range, key=key, revision=middle), deadline)
            if at is None:  # compacted: what we look for is later, or gone
                low = middle + 1
                continue
            seen = int(at.kvs[0].version) if at.kvs else 0
            if seen == version:
                return int(at.kvs[0].mod_revision)
            if seen > version:
                high = middle - 1
            else:
                low = middle + 1
        return None

    def close(self) -> None:
        for task in [*self._tasks, *self._recoveries, *self._changes]:
            task.cancel()
        self._tasks = []
        asyncio.get_running_loop().create_task(self._close_sessions())

    async def _close_sessions(self) -> None:
        with contextlib.suppress(Exception):
            await self.session.close()
            await self.watch_session.close()


async def _range(client: aetcd.Client, key: bytes, revision: int) -> Any:
    """The key as of `revision` (0: now), with the response's header; None if that
    revision is compacted. (aetcd's get takes no revision: its stub is called.)"""
    request = rpc.RangeRequest(key=key, revision=revision)
    try:
        return await client.kvstub.Range(request, timeout=client._timeout,
                                         metadata=client.metadata)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
            return None
        raise


async def _replay(client: aetcd.Client, key: bytes, start: int, first: int, last: int
                  ) -> list[tuple[float, Any]] | None:
    """The key's values of versions first..last, replayed by a watch from `start`."""
    events: asyncio.Queue[Any] = asyncio.Queue()
    try:
        watch = await client._watcher.add_callback(key, events.put, start_revision=start)
    except aetcd.exceptions.RevisionCompactedError:
        return None
    got: list[tuple[float, Any]] = []
    try:
        expected = first
        while expected <= last:
            event = await events.get()
            if isinstance(event, aetcd.exceptions.RevisionCompactedError):
                return None
            if isinstance(event, Exception):
                raise event
            if event.kind != "PUT":
                return None  # the key was deleted meanwhile: another epoch
            version = int(event.kv.version)
            if version < expected:
                continue
            if version != expected:
                return None
            found = unpack(event.kv.value)
            got.append(found if found is not None else (time.time(), None))
            expected += 1
        return got
    finally:
        await stop_watch(client, watch.watch_id)


def _tagged(events: asyncio.Queue[Any], group: str, event: Any) -> None:
    events.put_nowait((group, event))
