"""Shard keys at the gateway's hub, without sockets: where a sharded connection is
placed, and how a room moves to a worker that joins only once the old one has
answered everything its connections sent."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from cluster.gateway.http_core import Request
from cluster.gateway.ws_core import WebSocketCore, WsOptions
from cluster.gateway.ws_hub import WebSocketHub
from cluster.gateway.ws_session import rendezvous
from cluster.plumbing import wire


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.paused = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


UPGRADE = Request("GET", "/room", "1.1", [
    ("host", "x"), ("upgrade", "websocket"), ("connection", "Upgrade"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="), ("sec-websocket-version", "13")])
FIELDS = {"target": "/room", "headers": [], "subprotocols": [], "addr": ["127.0.0.1", 1]}


class Hub:
    """A hub whose posts to workers are recorded, over a worker set the test sets."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.live: list[tuple[bytes, str]] = [(b"A", "worker-a")]
        self.posts: list[tuple[bytes, dict[str, Any]]] = []
        self.hub = WebSocketHub(loop, "gw", self, max_queue=1 << 20, ping_interval=20,
                                ping_timeout=20, open_timeout=10)

    # -- the hub's way to its workers (a `WorkerPosts`) --
    @property
    def workers(self) -> dict[bytes, str]:
        return dict(self.live)

    def live_workers(self) -> list[tuple[bytes, str]]:
        return self.live

    def post_to(self, ident: bytes, msg: dict[str, Any]) -> None:
        self.posts.append((ident, msg))

    def connect(self, conn: int, shard: str | None) -> FakeTransport:
        core = WebSocketCore(WsOptions())
        assert core.open_handshake(UPGRADE) is None
        transport = FakeTransport()
        assert self.hub.open(conn, core, transport, dict(FIELDS))
        self.act(wire.accept(conn, None, [], shard))
        return transport

    def act(self, *actions: list[Any]) -> None:
        self.hub.on_actions(b"A", {"actions": list(actions)})

    def sent(self, kind: str) -> list[tuple[bytes, int]]:
        return [(w, m["conn"]) for w, m in self.posts if m["k"] == kind]


@pytest.fixture
def hub() -> Iterator[Hub]:
    loop = asyncio.new_event_loop()
    yield Hub(loop)
    loop.close()


def test_a_sharded_connection_is_adopted_by_the_keys_worker(hub: Hub) -> None:
    hub.live = [(b"A", "worker-a"), (b"B", "worker-b")]
    hub.connect(1, "room:1")
    owner = rendezvous("room:1", hub.live)
    assert hub.sent(wire.WS_ADOPT) == [(owner, 1)]
    adopt = next(m for _, m in hub.posts if m["k"] == wire.WS_ADOPT)
    assert adopt["shard"] == "room:1" and adopt["target"] == "/room"
    assert hub.hub.sessions[1].worker == owner and hub.hub.shards.shards == {"room:1": {1}}


def test_an_unsharded_connection_keeps_no_request_fields(hub: Hub) -> None:
    hub.connect(1, None)
    assert hub.sent(wire.WS_ADOPT) == [] and hub.hub.sessions[1].fields is None


def test_a_joining_worker_gets_the_room_after_the_old_one_answered(hub: Hub) -> None:
    # A key the joining worker B wins over A.
    both = [(b"A", "worker-a"), (b"B", "worker-b")]
    key = next(f"room:{i}" for i in range(100) if rendezvous(f"room:{i}", both) == b"B")
    transport = hub.connect(1, key)
    session = hub.hub.sessions[1]
    session.inflight = 2  # two of its messages still at A
    hub.live = both
    hub.hub.shards.rebalance()
    assert transport.paused and hub.hub.shards.moving == {key: b"B"}
    assert hub.sent(wire.WS_RELEASE) == []
    hub.act(wire.ack(1))
    assert hub.sent(wire.WS_RELEASE) == [] and transport.paused
    hub.act(wire.ack(1))  # A has answered all: the move happens, reading resumes
    assert hub.sent(wire.WS_RELEASE) == [(b"A", 1)]
    assert hub.sent(wire.WS_ADOPT)[-1] == (b"B", 1)
    assert session.worker == b"B" and not transport.paused and not hub.hub.shards.moving


def test_a_move_toward_a_worker_that_leaves_is_called_off(hub: Hub) -> None:
    both = [(b"A", "worker-a"), (b"B", "worker-b")]
    key = next(f"room:{i}" for i in range(100) if rendezvous(f"room:{i}", both) == b"B")
    transport = hub.connect(1, key)
    hub.hub.sessions[1].inflight = 1
    hub.live = both
    hub.hub.shards.rebalance()
    assert transport.paused
    hub.live = [(b"A", "worker-a")]
    hub.hub.worker_gone(b"B")
    assert not transport.paused and not hub.hub.shards.moving
    assert hub.hub.sessions[1].worker == b"A" and hub.sent(wire.WS_RELEASE) == []


def test_a_closing_connection_no_longer_holds_its_room_back(hub: Hub) -> None:
    both = [(b"A", "worker-a"), (b"B", "worker-b")]
    key = next(f"room:{i}" for i in range(100) if rendezvous(f"room:{i}", both) == b"B")
    hub.connect(1, key)
    quiet = hub.connect(2, key)
    hub.hub.sessions[1].inflight = 3
    hub.live = both
    hub.hub.shards.rebalance()
    hub.hub.connection_lost(hub.hub.sessions[1])  # the busy one goes away
    assert hub.sent(wire.WS_RELEASE) == [(b"A", 2)] and not quiet.paused
    assert hub.hub.shards.shards == {key: {2}}


def test_a_malformed_action_is_logged_once_and_the_next_one_runs(
        hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    hub.connect(1, None)
    hub.act(["join", 1], ["join", 1, 5], ["launch", 1], wire.join(1, "g"))
    assert hub.hub.groups.members == {"g": {1}}
    faults = [r.getMessage() for r in caplog.records if "bad WebSocket action" in r.message]
    assert len(faults) == 3 and "join: 1 fields, not 2" in faults[0]


def test_an_action_refused_below_the_hub_costs_only_itself(
        hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    hub.connect(1, None)
    hub.act(wire.close(1, 99999, "no such code"), wire.join(1, "g"))
    assert hub.hub.groups.members == {"g": {1}}
    assert "'close' from a worker failed" in caplog.text


def test_rendezvous_spreads_keys_that_differ_in_a_character() -> None:
    """Rooms named r0..r11 over two workers named as workers are ("wk-" and 12 hex
    digits): all on one worker should be about 2 in 4,096 pairs of workers. CRC-32
    weights (linear in the key) put them all on one in 3.1%."""
    draw = random.Random(22)
    pairs = [[(b"A", f"wk-{draw.getrandbits(48):012x}"), (b"B", f"wk-{draw.getrandbits(48):012x}")]
             for _ in range(2000)]
    on_one = sum(len({rendezvous(f"r{i}", pair) for i in range(12)}) == 1 for pair in pairs)
    assert on_one <= 5  # expected about 1
    # A gateway's connection numbers (the hub's key) over four workers: each a quarter.
    four = [(bytes([65 + i]), f"wk-{draw.getrandbits(48):012x}") for i in range(4)]
    owners = Counter(rendezvous(f"gw-1/{conn}", four) for conn in range(4000))
    assert sorted(owners) == [b"A", b"B", b"C", b"D"]
    assert all(850 <= n <= 1150 for n in owners.values()), owners
