"""`cluster.publish` on etcd, in a worker: each message is one put to its group's key
(cluster/etcd/history.py has the mapping), which numbers it.

A worker's messages to one group are put one after the other, in the order it
published them; its groups go in parallel. Each put runs in a transaction with a
marker key of its own that it requires absent (as the state's writes do,
cluster/etcd/state.py): a put whose answer was lost (its member failed mid-call),
tried again on another member, is not numbered twice. A message that no quorum
takes within --state-timeout of its turn is dropped with a log line, as the
coordinator drops one it cannot keep: it was never numbered, so no client sees a gap.
A group's queue holds at most MAX_QUEUED messages (etcd slower than the publishing,
for long): one beyond that is dropped the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from typing import Any

import aetcd

from cluster.errors import EtcdUnavailable
from cluster.etcd.history import history_prefix, pack
from cluster.etcd.session import EtcdSession, EtcdTarget

log = logging.getLogger("cluster.etcd.history")

MARKER_TTL = 60  # seconds a put's marker lives: longer than a call is retried
MAX_QUEUED = 10_000  # messages waiting for their turn, per group


class EtcdPublisher:
    def __init__(self, loop: asyncio.AbstractEventLoop, target: EtcdTarget,
                 timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.session = EtcdSession(target, timeout)
        self.prefix = history_prefix(target)
        self.marker_prefix = target.prefix + f"w/{uuid.uuid4().hex[:12]}/p".encode()
        self.queues: dict[str, deque[bytes]] = {}  # group -> values waiting
        self._tasks: set[asyncio.Task[None]] = set()
        self._puts = 0
        self._lease: aetcd.Lease | None = None
        self._lease_at = 0.0
        self.published = 0
        self.dropped = 0

    def publish(self, group: str, data: Any) -> None:
        """On the loop: queue the message behind this worker's others to `group`."""
        try:
            value = pack(data, time.time())
        except (TypeError, ValueError) as exc:
            self.dropped += 1
            log.error("publish to %r: the message cannot be encoded (%s); dropped", group, exc)
            return
        queue = self.queues.get(group)
        if queue is None:
            queue = self.queues[group] = deque()
            task = self.loop.create_task(self._drain(group, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if len(queue) >= MAX_QUEUED:
            self.dropped += 1
            log.error("publish to %r: %d messages already wait for etcd; dropped", group,
                      len(queue))
            return
        queue.append(value)

    async def _drain(self, group: str, queue: deque[bytes]) -> None:
        key = self.prefix + group.encode()
        try:
            while queue:
                try:
                    await self._put(key, queue[0], self.loop.time() + self.timeout)
                    self.published += 1
                except EtcdUnavailable as exc:
                    self.dropped += 1
                    log.error("publish to %r: no etcd quorum took it in time (%s); dropped",
                              group, exc)
                queue.popleft()
        finally:
            # No await since the loop's last check: a publish cannot slip in between.
            if self.queues.get(group) is queue:
                del self.queues[group]

    async def _put(self, key: bytes, value: bytes, deadline: float) -> None:
        self._puts += 1
        marker = self.marker_prefix + str(self._puts).encode()

        async def run(client: aetcd.Client) -> None:
            tx = client.transactions
            lease = await self._marker_lease(client)
            # Not taken: an earlier try of this same put committed. Done either way.
            await client.transaction([tx.create(marker) == 0],
                                     [tx.put(marker, b"", lease=lease), tx.put(key, value)],
                                     [])

        await self.session.call(run, deadline)

    async def _marker_lease(self, client: aetcd.Client) -> aetcd.Lease:
        now = self.loop.time()
        if self._lease is None or now - self._lease_at > MARKER_TTL / 2:
            self._lease = await client.lease(MARKER_TTL)
            self._lease_at = now
        return self._lease

    async def drain(self, timeout: float) -> None:
        """At a worker's orderly stop: let queued messages go out, within `timeout`."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.session.close()
