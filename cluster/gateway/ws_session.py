"""One WebSocket connection (or event stream) as the gateway's hub keeps it, and what
the hub's parts need of the gateway's way to its workers."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

from cluster.gateway.client_stream import ClientStream


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class WorkerPosts(Protocol):
    """The gateway's way to its workers (the `Dispatcher` is it): which are linked,
    which of them take new work, and a message to one."""

    @property
    def workers(self) -> Mapping[bytes, Any]: ...

    def live_workers(self) -> list[tuple[bytes, str]]: ...

    def post_to(self, ident: bytes, msg: dict[str, Any]) -> None: ...


class Session:
    """One accepted (or accepting) WebSocket connection, or an event stream (a
    response of Server-Sent Events, which belongs to no worker: `worker` is b"")."""

    __slots__ = (
        "accepted",
        "closed",
        "conn",
        "core",
        "fields",
        "groups",
        "handshake",
        "held",
        "inflight",
        "next_ping",
        "opened_at",
        "ping_sent",
        "pongs_seen",
        "quiet_until",
        "reading_paused",
        "shard",
        "transport",
        "worker",
    )

    def __init__(self, conn: int, core: ClientStream, transport: Transport,
                 worker: bytes, now: float, fields: dict[str, Any] | None) -> None:
        self.conn = conn
        self.core = core
        self.transport = transport
        self.worker = worker
        self.groups: set[str] = set()
        self.accepted = False
        self.opened_at = now
        self.ping_sent = 0.0  # when our unanswered ping went out; 0: none pending
        self.next_ping = 0.0  # set on accept
        self.pongs_seen = 0
        self.closed = False
        self.inflight = 0  # messages at the worker, not yet acknowledged
        self.reading_paused = False  # too many messages in flight
        self.held = False  # not read while its shard moves to another worker
        # Nothing written to it until every worker has read this group notice (its
        # first join of a group new here: group_notices.py); 0: none.
        self.quiet_until = 0
        self.handshake = b""  # the 101 response, written at the next flush
        self.shard: str | None = None
        # The handshake's request fields, until accepted; kept for a sharded
        # connection, whose adoption by another worker needs them.
        self.fields: dict[str, Any] | None = fields


def rendezvous(conn_key: str, workers: list[tuple[bytes, str]]) -> bytes | None:
    """Highest-random-weight choice: stable while the worker set is.

    The weight is a cryptographic hash, not a checksum: CRC-32 is linear, so keys
    that differ in a character or two ("r0", "r1", ... or a gateway's connection
    numbers) got correlated weights, and 12 rooms all fell to one of two workers
    (named "wk-" and 12 hex digits) in 3.1% of worker pairs instead of 0.05%."""
    best: bytes | None = None
    best_weight = -1
    for ident, name in workers:
        weight = int.from_bytes(
            hashlib.blake2b(f"{conn_key}|{name}".encode(), digest_size=8).digest(), "big")
        if weight > best_weight:
            best, best_weight = ident, weight
    return best
