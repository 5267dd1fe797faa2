"""Membership on etcd: each process's entry is a key on a lease it keeps alive.

`/NAME/members/<id>` holds the same description a coordinator would publish (id,
role, and the process's info: endpoint, key, metrics, ...), on a lease of
`--heartbeat-interval` times `--heartbeat-liveness` seconds (at least 2) refreshed
every third of it. A process that dies or is cut off stops refreshing; etcd deletes
its key when the lease runs out, and every watcher sees it leave. A process that
leaves in order revokes its lease: gone at once.

The table is read once, then followed by a watch from the next revision; a watch
that breaks is restarted from a fresh read. The object offers what a gateway and a
worker use of `registry.CoordinatorLink`, so they run the same on either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from functools import partial
from typing import Any

import aetcd

from cluster.errors import CoordinatorUnreachable, EtcdUnavailable
from cluster.etcd.session import FAILURES, EtcdSession, parse_backend, prefix_end, stop_watch
from cluster.plumbing.config import Common
from cluster.plumbing.coordinator_link import MembershipWatcher
from cluster.plumbing.security import Plaintext, Security
from cluster.plumbing.zmqio import Pump

log = logging.getLogger("cluster.etcd.members")

# A watch on a member that is cut off can go quiet without an error. The table is
# small: with no event for RELIST lease periods it is read again, so it is never
# staler than that, whatever the watch does.
RELIST = 2


class EtcdMembership:
    def __init__(self, config: Common, member_id: str, role: str, info: dict[str, Any],
                 watcher: MembershipWatcher, security: Security | None = None) -> None:
        self.config = config
        self.security = security if security is not None else Plaintext()
        self.target = parse_backend(config.state_backend)
        self.session = EtcdSession(self.target, config.peer_expiry)
        # The watch has a channel of its own: the keep-alive's rotations must not
        # close it under it (a closed channel's watch goes silent, not wrong).
        self.watch_session = EtcdSession(self.target, config.peer_expiry)
        self.member_id = member_id
        self.role = role
        self.info = info
        self.watcher = watcher
        self.members: list[dict[str, Any]] = []
        self.table: dict[str, dict[str, Any]] = {}
        self.registered = asyncio.Event()
        self.listed = False  # the table was read once
        self._stopping_watch: asyncio.Future[None] | None = None
        self._leaving: asyncio.Task[None] | None = None
        self.ttl = max(2, math.ceil(config.peer_expiry))
        self.lease: aetcd.Lease | None = None
        self.last_refresh = 0.0
        self.pump: Pump | None = None  # no ZeroMQ link to a coordinator (metrics ask)
        self._tasks: list[asyncio.Task[None]] = []
        self.prefix = self.target.prefix + b"members/"

    @property
    def key(self) -> bytes:
        return self.prefix + self.member_id.encode()

    @property
    def connected(self) -> bool:
        return time.monotonic() - self.last_refresh <= self.ttl

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tasks = [loop.create_task(self._keep_alive()), loop.create_task(self._follow())]

    async def wait_registered(self) -> None:
        try:
            await asyncio.wait_for(self.registered.wait(), self.config.start_timeout)
        except TimeoutError:
            raise CoordinatorUnreachable(
                f"no etcd member of {self.config.state_backend} answered within "
                f"{self.config.start_timeout:g}s (--state-backend, --start-timeout)") from None

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.ttl

    async def _register(self) -> None:
        description = json.dumps({"id": self.member_id, "role": self.role, **self.info})

        async def grant_and_put(client: aetcd.Client) -> aetcd.Lease:
            lease = await client.lease(self.ttl)
            await client.put(self.key, description.encode(), lease=lease)
            return lease

        self.lease = await self.session.call(grant_and_put, self._deadline())
        self.last_refresh = time.monotonic()
        if self.listed:  # the table is read too: we are in
            self.registered.set()
        log.info("%s %s registered in etcd (lease %ds)", self.role, self.member_id, self.ttl)

    async def _keep_alive(self) -> None:
        while True:
            try:
                if self.lease is None:
                    await self._register()
                else:
                    if await self.session.call(partial(_refresh, self.lease.id),
                                               self._deadline()) <= 0:
                        log.warning("our etcd lease ran out; registering again")
                        self.lease = None
                        continue
                    self.last_refresh = time.monotonic()
            except EtcdUnavailable as exc:
                log.warning("etcd: cannot refresh our membership: %s", exc)
            await asyncio.sleep(self.ttl / 3)

    async def _follow(self) -> None:
        """Read the table, then watch it; start over when the watch breaks."""
        while True:
            try:
                listing = await self.watch_session.call(
                    lambda c: c.get_prefix(self.prefix), self._deadline())
                self.table = {}
                revision = 0
                for kv in listing:
                    self._put(kv.key, kv.value)
                    revision = max(revision, kv.mod_revision)
                revision = max(revision, _header_revision(listing))
                self._publish()
                self.listed = True
                if self.lease is not None:  # our entry is written too: we are in
                    self.registered.set()
                client = await asyncio.wait_for(self.watch_session.client(), self.ttl)
                events: asyncio.Queue[Any] = asyncio.Queue()
                watch = await asyncio.wait_for(client._watcher.add_callback(
                    self.prefix, events.put, range_end=prefix_end(self.prefix),
                    start_revision=revision + 1),
                    self.ttl)
                try:
                    while True:
                        try:
                            event = await asyncio.wait_for(events.get(), RELIST * self.ttl)
                        except TimeoutError:
                            break  # quiet for long: read the table again (see RELIST)
                        if isinstance(event, Exception):
                            raise event
                        if event.kind == "PUT":
                            self._put(event.kv.key, event.kv.value)
                        else:
                            self.table.pop(event.kv.key.decode(errors="replace"), None)
                        if events.empty():  # the rest of this revision is in already
                            self._publish()
                finally:
                    self._stopping_watch = asyncio.ensure_future(
                        stop_watch(client, watch.watch_id))
            except Exception as exc:
                log.warning("etcd: membership watch broke (%r); reading it again", exc)
                self.watch_session.rotate(exc)
                await asyncio.sleep(0.2)

    def _put(self, key: bytes, value: bytes) -> None:
        try:
            entry = json.loads(value)
        except ValueError:
            log.warning("etcd: a member entry that is not JSON at %r; ignored", key)
            return
        if isinstance(entry, dict):
            self.table[key.decode(errors="replace")] = entry

    def _publish(self) -> None:
        members = list(self.table.values())
        if members != self.members:
            self.members = members
            self.watcher.on_members(members)

    def post(self, _msg: dict[str, Any]) -> None:
        """Nothing travels to a coordinator: there is none."""

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._leaving = asyncio.get_running_loop().create_task(self._leave())

    async def wait_closed(self) -> None:
        """Until our lease is revoked (at most a second): we leave the table now."""
        leaving = self._leaving
        if leaving is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(leaving), 1.5)

    async def _leave(self) -> None:
        """Revoke our lease, so we leave the table now rather than at its expiry."""
        lease = self.lease
        if lease is not None:
            with contextlib.suppress(EtcdUnavailable, *FAILURES):
                await self.session.call(lambda c: c.revoke_lease(lease.id),
                                        asyncio.get_running_loop().time() + 1.0)
        await self.session.close()
        await self.watch_session.close()


async def _refresh(lease_id: int, client: aetcd.Client) -> int:
    """Refresh a lease: the TTL left (0: it ran out)."""
    answer = await client.refresh_lease(lease_id)
    return int(answer.TTL) if answer is not None else 0


def _header_revision(listing: Any) -> int:
    """The store's revision when a range was read (0 if the client does not say)."""
    header = getattr(listing, "header", None)
    return int(getattr(header, "revision", 0) or 0)
