"""A worker's link to one gateway: a DEALER whose identity is the worker id, the
HELLO that gives the gateway its credit, heartbeats both ways, and the drain.

A gateway silent for the expiry is sent HELLO again until it answers (a restarted
gateway learns of us that way). To drain, the link says HELLO with credit 0; the
WELCOME that answers it is, on an ordered link, the proof that no REQUEST is still
on its way (`drained`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import zmq

from cluster.etcd.state import EtcdState
from cluster.plumbing import wire
from cluster.plumbing.config import WorkerConfig
from cluster.plumbing.security import Security
from cluster.plumbing.zmqio import Pump
from cluster.worker.push import Push
from cluster.worker.runner import Runner
from cluster.worker.ws_events import HANDOVER, KINDS

log = logging.getLogger("cluster.worker")


class GatewayLink:
    """What comes in goes to the worker's parts it names: requests and WebSocket
    events to the runner, group notices and members() answers to the push runtime,
    the sequencer's claims and answers to the etcd state (if that is the backend)."""

    def __init__(self, gateway_id: str, endpoint: str, key: bytes, *, worker_id: str,
                 config: WorkerConfig, loop: asyncio.AbstractEventLoop,
                 zmq_context: zmq.Context[zmq.Socket[bytes]], security: Security,
                 runner: Runner, push: Push, etcd_state: EtcdState | None) -> None:
        self.worker_id = worker_id
        self.config = config
        self.runner = runner
        self.push = push
        self.etcd_state = etcd_state
        self.gateway_id = gateway_id
        self.endpoint = endpoint
        self.closed = False
        self.welcomed = False
        self.hellos = 0  # sent; the gateway answers each with a WELCOME, in order
        self.welcomes = 0
        self.drain_mark = -1  # the HELLO with credit 0 that began draining is this one
        self.gone = False  # the gateway said BYE: it is stopping
        self.orphaned = False  # gone from membership; closed once it is silent too
        self.last_heard = time.monotonic()
        self.lost_sends = 0  # messages the socket refused (on_send_error)
        self.actions_sent = 0  # WS_ACTIONS messages, numbered (`n`) for group notices
        self.draining = False  # said credit 0: the worker stops
        sock = zmq_context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # The identity names the gateway instance too: a gateway restarted at the same
        # endpoint (a new id) refuses what this socket still holds for the old one,
        # which ZeroMQ would otherwise deliver there on reconnecting (stale pushes to
        # connection numbers that are other clients' now).
        sock.setsockopt_string(zmq.IDENTITY, f"{worker_id}@{gateway_id}")
        sock.setsockopt(zmq.MAXMSGSIZE, config.max_frame)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        security.client(sock, key)  # the gateway's key, from its membership entry
        sock.connect(endpoint)
        self.pump = Pump(loop, sock, self, routed=False, max_frame=config.max_frame)
        self.hello()

    @property
    def credit(self) -> int:
        """Requests the gateway may send us at once."""
        return 0 if self.draining else self.config.concurrency + self.config.prefetch

    def hello(self) -> None:
        self.hellos += 1
        self.post(wire.envelope(wire.HELLO, id=self.worker_id, credit=self.credit))

    def drain(self) -> None:
        """Credit 0: the gateway sends nothing more after it has read this."""
        self.draining = True
        self.hello()
        # A gateway that never welcomed us (or forgot us) has sent us nothing.
        self.drain_mark = self.hellos if self.welcomed else 0

    @property
    def drained(self) -> bool:
        """Nothing more can come on this link: the gateway answered our credit-0 HELLO
        (every REQUEST it sent is here), said BYE, or is silent past the expiry."""
        return self.closed or self.gone or 0 <= self.drain_mark <= self.welcomes or \
            self.silent

    def post(self, msg: dict[str, Any]) -> None:
        if not self.closed:
            if msg["k"] == wire.WS_ACTIONS:
                self.actions_sent += 1
                msg["n"] = self.actions_sent
                self.push.view.sending(self.gateway_id, self.actions_sent,
                                              msg["actions"])
            self.pump.post(msg)

    def on_send_error(self, _peer: bytes | None, messages: list[dict[str, Any]]) -> None:
        # The gateway is not reading (its queue for us is full) or gone. Its own clock
        # answers what we held (504), and the link ends when its heartbeats stop;
        # nothing here would make the lost frame arrive.
        self.lost_sends += len(messages)
        log.warning("%d messages to gateway %s dropped (%d so far): it is not reading, "
                    "or gone", len(messages), self.gateway_id, self.lost_sends)

    def on_messages(self, _peer: bytes | None, messages: list[dict[str, Any]]) -> None:
        self.last_heard = time.monotonic()
        for msg in messages:
            kind = msg["k"]
            if kind == wire.REQUEST:
                self.runner.request(self, msg)
            elif kind in KINDS or kind in HANDOVER:
                self.runner.ws_event(self, msg)
            elif kind == wire.GONE:
                self.runner.client_gone(self, msg["id"])
            elif kind == wire.STREAM_CREDIT:
                self.runner.stream_credit(self, msg["id"], msg["bytes"])
            elif kind == wire.WS_QUERY_REPLY:
                self.push.on_query_reply(self.gateway_id, msg)
            elif kind == wire.WS_GROUPS:
                self.push.view.on_notice(self.gateway_id, msg)
                if msg["r"]:
                    self.post(wire.envelope(wire.WS_GROUPS_ACK, r=msg["r"]))
            elif kind in (wire.STATE_ACK, wire.SEQUENCER) and self.etcd_state is not None:
                self.etcd_state.on_sequencer(self.gateway_id, msg)
            elif kind == wire.WELCOME:
                self.welcomes += 1
                if not self.welcomed:
                    log.info("connected to gateway %s at %s", self.gateway_id, self.endpoint)
                self.welcomed = True
            elif kind == wire.WHO:
                self.welcomed = False
                self.hello()
            elif kind == wire.BYE:
                self.gone = True  # it stops; a restarted one says WHO to our heartbeat
                self.welcomed = False
                self.push.view.gateway_gone(self.gateway_id)
                if self.etcd_state is not None:
                    self.etcd_state.on_gateway_gone(self.gateway_id)
            elif kind != wire.HEARTBEAT:
                log.warning("unexpected %s from gateway; ignored", kind)

    @property
    def silent(self) -> bool:
        return time.monotonic() - self.last_heard > self.config.peer_expiry

    def heartbeat(self) -> None:
        if self.silent:
            if self.welcomed:
                log.warning("gateway %s silent; saying hello until it answers", self.gateway_id)
            self.welcomed = False
        if self.welcomed:
            self.post(wire.envelope(wire.HEARTBEAT, id=self.worker_id))
        else:
            self.hello()

    def close(self, linger: float = 0.0) -> None:
        self.closed = True
        self.pump.close(linger)
