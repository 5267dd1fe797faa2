"""Publish to WebSocket clients from outside the workers: a script, a cron job,
another service.

    from cluster.publisher import Publisher

    with Publisher("tcp://coordinator:5555", keys="/keys") as pub:  # keys: as a member's
        pub.broadcast("room:lobby", {"notice": "maintenance at 18:00"})
        pub.push("gw-3f2a.../17", "just for you")

The publisher talks only to the coordinator, which hands its broadcasts and pushes
on to the gateways over its one ordered link to each:
- a broadcast goes only to the gateways that hold members of the group (the
  coordinator knows them, as it does for published messages), so a gateway pays
  nothing for a group it does not hold. A gateway lets a new member hear of its join
  only once the coordinator knows it holds the group, so a broadcast sent after a
  member saw its join reaches it;
- a push goes to its connection's gateway, after this publisher's earlier
  broadcasts and pushes: one client gets them in the order they were sent.
It never joins the cluster, so it costs the members nothing. It asks the coordinator
for the membership table (SYNC) when its view is older than `refresh` seconds (1 s)
or a push names a gateway it does not know, so `push` can say False for a gateway
that is not in the cluster and a stream of broadcasts costs no round trip each.
It is synchronous and thread-safe per call; it has no event loop of its own.
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
        self._gateways: set[str] = set()  # the gateways in the cluster, as last asked
        try:
            self._refresh()
        except PublisherError:
            self.close()  # nothing of a failed start stays open
            raise

    def _refresh_if_stale(self) -> None:
        if time.monotonic() - self._refreshed_at >= self.refresh:
            self._refresh()

    def _refresh(self) -> None:
        """Ask the coordinator for the membership: which gateways there are."""
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
                    self._gateways = {m["id"] for m in msg["members"]
                                      if isinstance(m, dict) and m.get("role") == "gateway"
                                      and isinstance(m.get("id"), str)}
                    self._refreshed_at = time.monotonic()
                    return

    def broadcast(self, group: str, data: Any) -> int:
        """Send to every member of `group`, on whichever gateways they are; returns how
        many gateways the cluster had when last asked (the coordinator sends it to
        those of them that hold members of the group)."""
        with self._lock:
            self._refresh_if_stale()
            if not self._gateways:
                raise PublisherError("the cluster has no gateway")
            self._coord.send(wire.encode_one(wire.RELAY_BROADCAST, id=self.id, group=group,
                                             data=frame_data(data)))
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
                if gateway not in self._gateways:
                    return False
            self._coord.send(wire.encode_one(wire.RELAY_PUSH, id=self.id, gateway=gateway,
                                             conn=number, data=frame_data(data)))
            return True

    def close(self) -> None:
        with self._lock:
            self._gateways.clear()
            # What is queued for the coordinator still goes, for up to a second.
            self._coord.close(linger=1000)
            self._ctx.term()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None
                 ) -> None:
        self.close()
