"""Publish to WebSocket clients from outside the workers: a script, a cron job,
another service.

    from cluster.publisher import Publisher

    with Publisher("tcp://coordinator:5555", keys="/keys") as pub:  # keys: as a member's
        pub.broadcast("room:lobby", {"notice": "maintenance at 18:00"})
        pub.push("gw-3f2a.../17", "just for you")

The publisher asks the coordinator for its membership table (SYNC; it never joins,
so it costs the members nothing), learns every gateway from it, and sends its
actions straight to them, as a worker would: a broadcast is one message per
gateway. It asks the coordinator again when its view is older than `refresh`
seconds (1 s), so a stream of broadcasts costs no round trip each, and a gateway
that joins is reached within a second. It is synchronous and thread-safe per call; it
has no event loop of its own.
"""

from __future__ import annotations

import threading
import time
import uuid
from types import TracebackType
from typing import Any

import zmq

from cluster.errors import ConfigError, PublisherError
from cluster.plumbing import wire
from cluster.plumbing.security import for_process
from cluster.realtime import frame_data, split_conn


class Publisher:
    """`keys`/`key_name`: a key pair the cluster allows (as a member's --keys and
    --key-name; `cluster keygen DIR publisher` makes one); `insecure` for a cluster
    running --insecure."""

    def __init__(self, coordinator: str, timeout: float = 5.0, refresh: float = 1.0, *,
                 keys: str = "", key_name: str = "publisher", insecure: bool = False
                 ) -> None:
        try:
            self._security = for_process(keys, key_name, insecure, "publisher")
        except ConfigError as exc:
            raise PublisherError(str(exc)) from None
        self.id = f"pub-{uuid.uuid4().hex[:12]}"
        self.timeout = timeout
        self.refresh = refresh
        self._refreshed_at = 0.0
        self._lock = threading.Lock()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._coord = self._ctx.socket(zmq.DEALER)
        self._coord.setsockopt(zmq.LINGER, 0)
        self._security.coordinator_client(self._coord)
        self._coord.connect(coordinator)
        self._gateways: dict[str, zmq.Socket[bytes]] = {}
        try:
            self._refresh()
        except PublisherError:
            self.close()  # nothing of a failed start stays open
            raise

    def _refresh_if_stale(self) -> None:
        if time.monotonic() - self._refreshed_at >= self.refresh:
            self._refresh()

    def _refresh(self) -> None:
        """Ask the coordinator for the membership; connect to new gateways."""
        while self._coord.poll(0):  # a late answer to an earlier ask that timed out
            self._coord.recv()
        self._coord.send(wire.encode_one(wire.SYNC, id=self.id))
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._coord.poll(int(left * 1000)):
                raise PublisherError("no answer from the coordinator")
            for msg in wire.decode_frame(self._coord.recv()):
                if msg["k"] == wire.MEMBERS:
                    self._connect({m["id"]: (m["endpoint"], m["key"]) for m in msg["members"]
                                   if isinstance(m, dict) and m.get("role") == "gateway"
                                   and isinstance(m.get("endpoint"), str)
                                   and isinstance(m.get("key"), str)})
                    self._refreshed_at = time.monotonic()
                    return

    def _connect(self, gateways: dict[str, tuple[str, str]]) -> None:
        for gid in list(self._gateways):
            if gid not in gateways:
                self._gateways.pop(gid).close(linger=0)
        for gid, (endpoint, key) in gateways.items():
            if gid not in self._gateways:
                sock = self._ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 1000)  # let queued actions go out on close
                # As a worker's: named for this gateway instance (gateway/dispatch.py).
                sock.setsockopt_string(zmq.IDENTITY, f"{self.id}@{gid}")
                try:
                    self._security.client(sock, key.encode())
                except ConfigError as exc:
                    sock.close(linger=0)
                    raise PublisherError(f"gateway {gid}: {exc}") from None
                sock.connect(endpoint)
                self._gateways[gid] = sock

    def _send(self, sock: zmq.Socket[bytes], action: list[Any]) -> None:
        sock.send(wire.encode_one(wire.WS_ACTIONS, actions=[action]))

    def broadcast(self, group: str, data: Any) -> int:
        """Send to every member of `group` on every gateway; returns gateways reached."""
        with self._lock:
            self._refresh_if_stale()
            if not self._gateways:
                raise PublisherError("the cluster has no gateway")
            for sock in self._gateways.values():
                self._send(sock, wire.broadcast(group, frame_data(data)))
            return len(self._gateways)

    def publish(self, group: str, data: Any) -> None:
        """A broadcast with history, as cluster.publish: the coordinator numbers it,
        keeps it and hands it to every gateway. `data` must be JSON-able."""
        with self._lock:
            self._coord.send(wire.encode_one(wire.HISTORY_PUBLISH, id=self.id, group=group,
                                             data=data))

    def push(self, conn: str, data: Any) -> bool:
        """Send to one connection; False when its gateway is not in the cluster."""
        gateway, number = split_conn(conn)
        with self._lock:
            if gateway not in self._gateways:
                self._refresh()
            sock = self._gateways.get(gateway)
            if sock is None:
                return False
            self._send(sock, wire.send(number, frame_data(data)))
            return True

    def close(self) -> None:
        with self._lock:
            for sock in self._gateways.values():
                sock.close()
            self._gateways.clear()
            self._coord.close(linger=0)
            self._ctx.term()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None
                 ) -> None:
        self.close()
