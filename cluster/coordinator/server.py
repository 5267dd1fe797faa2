"""The coordinator process: a ROUTER that members register and heartbeat with.

Members (gateways, workers) connect a DEALER and send REGISTER; the coordinator
answers with MEMBERS (the whole table and its sequence number) and sends MEMBERS
again to every member whenever the table changes. Heartbeat replies carry the
sequence number, so a member that missed an update notices and sends SYNC.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import zmq

from cluster.coordinator.history import HistoryBook
from cluster.coordinator.history_log import HistoryLog
from cluster.coordinator.membership import Membership
from cluster.coordinator.metrics import CoordinatorMetrics
from cluster.coordinator.state_service import StateService
from cluster.plumbing import wire
from cluster.plumbing.config import CoordinatorConfig
from cluster.plumbing.lifecycle import report_ready, run_until_signalled
from cluster.plumbing.metrics import MetricsServer, metrics_page, target
from cluster.plumbing.security import HANDSHAKE_FAILED, Plaintext, Security, for_process
from cluster.plumbing.zmqio import Monitor, Pump, bind

log = logging.getLogger("cluster.coordinator")

# What members send the coordinator; the wire schema gives each of them an "id".
MEMBER_KINDS = frozenset({wire.HEARTBEAT, wire.REGISTER, wire.STATE_OP,
                          wire.SNAPSHOT_REQUEST, wire.SYNC, wire.BYE,
                          wire.HISTORY_PUBLISH, wire.HISTORY_QUERY, wire.GROUPS_HELD,
                          wire.RELAY_BROADCAST, wire.RELAY_PUSH})


class Coordinator:
    def __init__(self, config: CoordinatorConfig, zmq_context: zmq.Context[zmq.Socket[bytes]],
                 security: Security | None = None) -> None:
        self.config = config
        self.security = security if security is not None else Plaintext()
        # ZAP answers before the first client can connect.
        self.gatekeeper = self.security.gatekeeper(zmq_context)
        self.membership = Membership(config.peer_expiry)
        self.history = HistoryBook(config.history_size, config.history_ttl)
        self.history_log: HistoryLog | None = None
        # Gateway id -> the groups it holds (None: not said yet, so it gets everything).
        self.gateway_groups: dict[str, set[str] | None] = {}
        self.history_skipped = 0  # messages not sent to a gateway holding no member
        self.relayed = 0  # an outside publisher's broadcasts and pushes, handed on
        self.relay_skipped = 0  # its broadcasts not sent to a gateway holding no member
        self.relay_refused = 0  # ones with data that is not text or bytes, or no gateway
        if config.data_dir:
            self.history_log = HistoryLog(Path(config.data_dir), config.fsync,
                                          compact_after=config.snapshot_every)
            self.history_log.open(self.history, time.monotonic())
        self.sock = zmq_context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.security.server(self.sock)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, config.max_frame)
        # Room for bursts toward members (published group messages): at the default
        # 1,000 frames a ROUTER drops what does not fit, silently.
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        bind(self.sock, config.coordinator_bind, "--coordinator-bind")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.routes: dict[str, bytes] = {}  # member id -> ROUTER identity
        self.pump: Pump | None = None
        self.monitors: list[Monitor] = []
        self.zmq_context = zmq_context
        self.state: StateService | None = None
        # The fan-out count is the coordinator's own (publish_history keeps it).
        self.metrics = CoordinatorMetrics(self.membership, self, self.history_log,
                                          self.gatekeeper)
        self.metrics_server = MetricsServer({"/metrics": metrics_page(self.metrics.registry),
                                             "/targets": self.metrics.targets},
                                            ready=self.readiness)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        host = self.endpoint.rpartition(":")[0]
        self.state = StateService(self.config, self.zmq_context, loop, self.send, host,
                                  self.security)
        if self.gatekeeper is not None:
            self.monitors = [Monitor(loop, sock, HANDSHAKE_FAILED, self.gatekeeper.on_socket_event)
                             for sock in (self.sock, self.state.pub)]
        if self.state.wal is not None:
            self.state.wal.observe_fsync = self.metrics.fsync.observe
        self.pump = Pump(loop, self.sock, self, routed=True,
                         max_frame=self.config.max_frame)
        self.metrics.watch(self.state, self.pump)
        loop.create_task(self.expire_loop())
        log.info("coordinator listening on %s", self.endpoint)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready once its log is open; whether writes are taken is shown beside."""
        if self.state is None:
            return False, {"log_open": False, "writable": False}
        details = self.state.readiness()
        return bool(details["log_open"]), details

    def close(self) -> None:
        for monitor in self.monitors:
            monitor.close()
        if self.pump is not None:
            self.pump.close()
        if self.state is not None:
            self.state.close()
        if self.history_log is not None:
            self.history_log.close()
        if self.gatekeeper is not None:
            self.gatekeeper.stop()

    def on_send_error(self, _peer: bytes | None, _messages: list[dict[str, Any]]) -> None:
        # Our ROUTER drops a frame for a peer it cannot reach without an error (no
        # ROUTER_MANDATORY): a member that stops taking messages is judged by its
        # heartbeats (expire_loop), not by a send.
        pass

    def on_messages(self, peer: bytes | None, messages: list[dict[str, Any]]) -> None:
        assert peer is not None  # a routed Pump always names the peer
        now = time.monotonic()
        changed = False
        for msg in messages:
            kind = msg["k"]
            if kind not in MEMBER_KINDS:
                # Valid on the wire, but not a member's to send (MEMBERS, UPDATE, ...):
                # and these kinds have no "id" to read.
                log.warning("unexpected %s from a member; ignored", kind)
                continue
            member_id: str = msg["id"]
            if kind == wire.HEARTBEAT:
                if self.membership.heartbeat(member_id, now):
                    self.routes[member_id] = peer
                    self.send(peer, wire.envelope(wire.HEARTBEAT, id="coordinator",
                                                  seq=self.membership.seq))
                else:
                    self.send(peer, wire.envelope(wire.WHO))
            elif kind == wire.REGISTER:
                self.routes[member_id] = peer
                if msg["role"] == "gateway" and member_id not in self.gateway_groups:
                    # Sent every published message until it says what it holds.
                    self.gateway_groups[member_id] = None
                    self.send(peer, wire.envelope(wire.GROUPS_ASK))
                if self.membership.register(member_id, msg["role"], msg["info"], now):
                    log.info("%s %s joined", msg["role"], member_id)
                    changed = True
                else:
                    self.send_members(peer)
            elif kind == wire.STATE_OP:
                assert self.state is not None
                self.state.on_op(peer, msg)
            elif kind == wire.SNAPSHOT_REQUEST:
                assert self.state is not None
                self.state.on_snapshot_request(peer, msg)
            elif kind == wire.SYNC:
                self.send_members(peer)
            elif kind == wire.HISTORY_PUBLISH:
                self.publish_history(msg["group"], msg.get("data"), now)
            elif kind == wire.HISTORY_QUERY:
                epoch, offset = msg.get("epoch"), msg.get("offset")
                kept, complete = self.history.since(
                    msg["group"], epoch if isinstance(epoch, str) else None,
                    offset if type(offset) is int else None, now)
                self.send(peer, wire.envelope(wire.HISTORY_ANSWER, rid=msg["rid"],
                                              epoch=self.history.epoch, messages=kept,
                                              complete=complete))
            elif kind == wire.GROUPS_HELD:
                self.on_groups_held(peer, member_id, msg)
            elif kind == wire.RELAY_BROADCAST:
                self.relay_broadcast(msg["group"], msg.get("data"))
            elif kind == wire.RELAY_PUSH:
                self.relay_push(msg["gateway"], msg["conn"], msg.get("data"))
            elif kind == wire.BYE and self.membership.leave(member_id):
                log.info("%s left", member_id)
                self.routes.pop(member_id, None)
                self.gateway_groups.pop(member_id, None)
                changed = True
        if changed:
            self.publish()

    def on_groups_held(self, peer: bytes, gateway_id: str, msg: dict[str, Any]) -> None:
        """A gateway's groups (cluster/gateway/group_notices.py): published messages go
        only to the gateways holding their group. Answered, so the gateway can let a
        new member hear of its join only once we know."""
        held = {g for g in msg["held"] if isinstance(g, str)}
        known = self.gateway_groups.get(gateway_id)
        if msg["full"]:
            self.gateway_groups[gateway_id] = held
        elif known is not None:
            known |= held
            known.difference_update(g for g in msg["dropped"] if isinstance(g, str))
        if msg["r"]:
            self.send(peer, wire.envelope(wire.WS_GROUPS_ACK, r=msg["r"]))

    def publish_history(self, group: str, data: Any, now: float) -> None:
        """Number the group's message, keep it, and hand it to every gateway holding
        the group: the one place all of a group's publishes pass, so its offsets are
        one order."""
        offset = self.history.publish(group, data, now)
        if self.history_log is not None:
            # On disk before any gateway has it: a coordinator killed now comes back
            # with this offset given, never to give it again (history_log.py).
            try:
                self.history_log.append(group, offset, data)
                if self.history_log.due():
                    self.history_log.compact(self.history, now)
            except OSError as exc:  # a full disk: not kept, so not sent, no offset spent
                self.history.withdraw(group)
                self.history_log.refused += 1
                log.error("history: cannot write %s's message to disk (%s); dropped",
                          group, exc)
                return
        env = wire.envelope(wire.HISTORY_MESSAGE, group=group, epoch=self.history.epoch,
                            offset=offset, data=data)
        self.history_skipped += self._to_holders(group, env)

    def relay_broadcast(self, group: str, data: object) -> None:
        """An outside publisher's broadcast: to each gateway holding the group, as a
        published message goes; a gateway that joins the group is released to its new
        member only once we know (on_groups_held answers it), so no broadcast sent
        after a member saw its join misses it."""
        if not isinstance(data, (str, bytes)):
            self._refuse_relay(f"a broadcast to {group!r} with {type(data).__name__} data")
            return
        env = wire.envelope(wire.WS_ACTIONS, actions=[wire.broadcast(group, data)])
        self.relayed += 1
        self.relay_skipped += self._to_holders(group, env)

    def relay_push(self, gateway_id: str, conn: int, data: object) -> None:
        """An outside publisher's push to one connection, on the same link to its
        gateway as that publisher's broadcasts: the two arrive in the order sent."""
        peer = self.routes.get(gateway_id)
        member = self.membership.members.get(gateway_id)
        if not isinstance(data, (str, bytes)) or peer is None or member is None or \
                member.role != "gateway":
            self._refuse_relay(f"a push to {gateway_id}/{conn}")
            return
        self.relayed += 1
        self.send(peer, wire.envelope(wire.WS_ACTIONS, actions=[wire.send(conn, data)]))

    def _refuse_relay(self, what: str) -> None:
        self.relay_refused += 1
        log.warning("relay refused (%d so far): %s (data must be text or bytes, to a "
                    "gateway in the cluster)", self.relay_refused, what)

    def _to_holders(self, group: str, env: dict[str, Any]) -> int:
        """Send `env` to every gateway that holds `group` (or has not said what it
        holds yet); how many others were skipped."""
        skipped = 0
        for member in self.membership.members.values():
            peer = self.routes.get(member.id)
            if member.role == "gateway" and peer is not None:
                groups = self.gateway_groups.get(member.id)
                if groups is None or group in groups:
                    self.send(peer, env)
                else:
                    skipped += 1
        return skipped

    def send(self, peer: bytes, msg: dict[str, Any]) -> None:
        assert self.pump is not None
        self.pump.post(msg, to=peer)

    def send_members(self, peer: bytes) -> None:
        assert self.state is not None
        self.send(peer, wire.envelope(wire.MEMBERS, seq=self.membership.seq,
                                      members=self.membership.snapshot(),
                                      state=self.state.info()))

    def publish(self) -> None:
        """Send the whole table to every member (tables are small; full copies are simple)."""
        for member_id in self.membership.members:
            peer = self.routes.get(member_id)
            if peer is not None:
                self.send_members(peer)

    async def expire_loop(self) -> None:
        ticks = 0
        while True:
            # A quarter interval: a dead member is dropped at most that late.
            await asyncio.sleep(self.config.heartbeat_interval / 4)
            ticks += 1
            if ticks % 4 == 0 and self.state is not None:
                self.state.tick()
            if self.history_log is not None:
                self.history_log.sync()  # batch: a quarter heartbeat at most unsynced
            gone = self.membership.expire(time.monotonic())
            for member in gone:
                self.routes.pop(member.id, None)
                self.gateway_groups.pop(member.id, None)
                log.warning("%s %s missed its heartbeats; dropped", member.role, member.id)
            if gone:
                self.publish()


def serve(config: CoordinatorConfig) -> None:
    async def main(stop: asyncio.Event) -> None:
        security = for_process(config.keys, config.key_name, config.insecure, "coordinator",
                           wait=config.start_timeout)
        zmq_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        coordinator = Coordinator(config, zmq_context, security)
        coordinator.start(asyncio.get_running_loop())
        ready: dict[str, Any] = {"role": "coordinator", "endpoint": coordinator.endpoint}
        if config.metrics_port >= 0:
            port = await coordinator.metrics_server.start(config.metrics_host,
                                                          config.metrics_port)
            coordinator.metrics.target = target(config.metrics_host, port,
                                                config.advertise_host)
            ready["metrics"] = coordinator.metrics.target
            ready["metrics_port"] = port
            log.info("metrics on http://%s/metrics, Prometheus discovery on "
                     "http://%s/targets", coordinator.metrics.target, coordinator.metrics.target)
        report_ready(config.ready_fd, ready)
        await stop.wait()
        coordinator.metrics_server.close()
        coordinator.close()
        zmq_context.term()

    run_until_signalled(main, config.ready_fd, config.heartbeat_interval)
