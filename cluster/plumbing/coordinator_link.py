"""A member's link to the coordinator: register, heartbeat, follow membership.

Used by gateways and workers alike. While the coordinator is away the member keeps
the last table it saw and keeps serving; when the coordinator answers again (a new
process knows nobody and says WHO) the member registers again by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import zmq

from cluster.errors import CoordinatorUnreachable
from cluster.plumbing import wire
from cluster.plumbing.config import Common
from cluster.plumbing.security import Plaintext, Security
from cluster.plumbing.zmqio import Pump

log = logging.getLogger("cluster.registry")


class MembershipWatcher(Protocol):
    """Who a membership link reports to: the gateway or the worker it belongs to."""

    def on_members(self, members: list[dict[str, Any]]) -> None:
        """The membership table changed (each member a dict: id, role, and its info)."""

    def on_coordinator(self, msg: dict[str, Any]) -> None:
        """Any other message from the coordinator, and MEMBERS too, after on_members
        (on etcd there is no coordinator: never called)."""


class MemberLink(Protocol):
    """What a gateway or a worker uses of its membership: this module's link to the
    coordinator, or `cluster.etcd.membership.EtcdMembership`."""

    info: dict[str, Any]
    registered: asyncio.Event
    members: list[dict[str, Any]]
    pump: Pump | None

    def start(self, loop: asyncio.AbstractEventLoop) -> None: ...

    async def wait_registered(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class CoordinatorLink:
    def __init__(self, config: Common, zmq_context: zmq.Context[zmq.Socket[bytes]], member_id: str,
                 role: str, info: dict[str, Any], watcher: MembershipWatcher,
                 security: Security | None = None) -> None:
        self.config = config
        self.security = security if security is not None else Plaintext()
        self.zmq_context = zmq_context
        self.member_id = member_id
        self.role = role
        self.info = info
        self.watcher = watcher
        self.seq = -1
        self.members: list[dict[str, Any]] = []
        self.last_heard = 0.0
        self.registered = asyncio.Event()
        self.pump: Pump | None = None
        self.dropped = 0  # messages the socket refused (see on_send_error)
        self._task: asyncio.Task[None] | None = None

    def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = self.zmq_context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_frame)
        # Room for bursts (state writes, published group messages): at 16 frames, a
        # burst of 2,000 publishes lost 224 of them. What queues toward a coordinator
        # that died is dropped anyway: a silent link gets a fresh socket (below).
        sock.setsockopt(zmq.SNDHWM, 10_000)
        self.security.coordinator_client(sock)
        sock.connect(self.config.coordinator)
        self.pump = Pump(loop, sock, self, routed=False, max_frame=self.config.max_frame)

    def on_send_error(self, _peer: bytes | None, msgs: list[dict[str, Any]]) -> None:
        """A frame the socket would not take (the coordinator is far behind or gone)."""
        self.dropped += len(msgs)
        log.warning("%d messages to the coordinator dropped (%d so far): it is not "
                    "keeping up, or gone", len(msgs), self.dropped)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._connect(loop)
        self._register()
        self._task = loop.create_task(self._heartbeat_loop())

    async def wait_registered(self) -> None:
        """At start: the coordinator answered, or CoordinatorUnreachable."""
        try:
            await asyncio.wait_for(self.registered.wait(), self.config.start_timeout)
        except TimeoutError:
            raise CoordinatorUnreachable(
                f"no answer from the coordinator at {self.config.coordinator} within "
                f"{self.config.start_timeout:g}s (--coordinator, --start-timeout)") from None

    @property
    def connected(self) -> bool:
        return time.monotonic() - self.last_heard <= self.config.peer_expiry

    def _register(self) -> None:
        assert self.pump is not None
        self.pump.post(wire.envelope(wire.REGISTER, id=self.member_id, role=self.role,
                                     info=self.info))

    def on_messages(self, _peer: bytes | None, messages: list[dict[str, Any]]) -> None:
        self.last_heard = time.monotonic()
        assert self.pump is not None
        for msg in messages:
            kind = msg["k"]
            if kind == wire.MEMBERS:
                if msg["seq"] != self.seq:
                    self.seq = msg["seq"]
                    self.members = [m for m in msg["members"] if isinstance(m, dict)]
                    self.watcher.on_members(self.members)
                self.registered.set()
                self.watcher.on_coordinator(msg)
            elif kind == wire.HEARTBEAT:
                if msg.get("seq") != self.seq:
                    self.pump.post(wire.envelope(wire.SYNC, id=self.member_id))
            elif kind == wire.WHO:
                log.info("coordinator does not know us (it restarted?); registering again")
                self._register()
            else:
                self.watcher.on_coordinator(msg)

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        was_connected = True
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            assert self.pump is not None
            if not self.connected:
                if was_connected:
                    log.warning("coordinator silent; serving with the membership we know")
                was_connected = False
                # A fresh socket drops whatever queued toward the dead peer.
                self.pump.close()
                self._connect(loop)
                self._register()
            else:
                was_connected = True
            self.pump.post(wire.envelope(wire.HEARTBEAT, id=self.member_id))

    def post(self, msg: dict[str, Any]) -> None:
        if self.pump is not None:
            self.pump.post(msg)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.pump is not None:
            self.pump.post(wire.envelope(wire.BYE, id=self.member_id))
            self.pump.close()

    async def wait_closed(self) -> None:
        """The BYE is queued by close(); nothing to wait for."""
