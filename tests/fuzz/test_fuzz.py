"""Fuzzing, bounded in time, with hypothesis: no undocumented exception from untrusted
input, anywhere it enters.

- the HTTP/1.1 core and the WebSocket core: any bytes, and mutations of the seeds
  checked in under tests/fuzz/seeds/, give only their documented events;
- `wire.decode_frame`: any bytes give envelopes or `WireError`, nothing else;
- every process's message dispatch (gateway, worker, coordinator): any envelope that
  passes the wire check, of any kind, with any of the optional fields a handler
  reads, is taken without an exception.

Each property runs `EXAMPLES` examples, with no example database: a fresh draw every
run (about ten seconds in all on 2 cores).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cluster.errors import WireError
from cluster.gateway.http_core import (
    ContinueExpected,
    HttpCore,
    HttpLimits,
    ProtocolError,
    Request,
)
from cluster.gateway.ws_core import Binary, Closed, Text, WebSocketCore, WsOptions
from cluster.plumbing import wire

SEEDS = Path(__file__).parent / "seeds"
EXAMPLES = 300
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


def seeds(kind: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((SEEDS / kind).glob("*.bin"))]


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """A seed with a few bytes replaced, inserted or cut, or cut short."""
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        byte = draw(st.integers(0, 255))
        if op == "replace" and at < len(data):
            data[at] = byte
        elif op == "insert":
            data.insert(at, byte)
        elif op == "delete" and at < len(data):
            del data[at]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# -- the sans-I/O cores -----------------------------------------------------------------

HTTP_EVENTS = (Request, ContinueExpected, ProtocolError)


@FUZZ
@given(st.one_of(st.binary(max_size=600), mutated(seeds("http"))),
       st.lists(st.integers(0, 10_000), max_size=4))
def test_http_core_takes_any_bytes(data: bytes, cuts: list[int]) -> None:
    core = HttpCore(HttpLimits(max_request_line=256, max_header_bytes=512,
                               max_header_count=10, max_body=256))
    errors = 0
    for piece in chunks(data, cuts):
        for event in core.receive_data(piece):
            assert isinstance(event, HTTP_EVENTS)
            errors += isinstance(event, ProtocolError)
    assert errors <= 1  # after an error, the core reads nothing more


UPGRADE = Request("GET", "/ws", "1.1", [("host", "x"), ("upgrade", "websocket"),
                                        ("connection", "Upgrade"),
                                        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                        ("sec-websocket-version", "13")], upgrade=True)


@FUZZ
@given(st.one_of(st.binary(max_size=600), mutated(seeds("ws"))),
       st.lists(st.integers(0, 10_000), max_size=4), st.booleans())
def test_websocket_core_takes_any_bytes(data: bytes, cuts: list[int], deflate: bool) -> None:
    core = WebSocketCore(WsOptions(max_size=200, deflate=deflate, origins=()))
    assert core.open_handshake(UPGRADE) is None
    status, _ = core.accept(None, [])
    assert status == 101
    for piece in chunks(data, cuts):
        for event in core.receive_data(piece):
            assert isinstance(event, Text | Binary | Closed)
        core.data_to_send()
    for event in core.receive_eof():
        assert isinstance(event, Text | Binary | Closed)


@FUZZ
@given(st.one_of(st.binary(max_size=400), mutated(seeds("wire"))))
def test_decode_frame_gives_envelopes_or_wire_error(data: bytes) -> None:
    try:
        envelopes = wire.decode_frame(data, max_frame=300)
    except WireError:
        return
    assert all(isinstance(e, dict) and e["k"] in wire.SCHEMA for e in envelopes)


# -- every process's dispatch -----------------------------------------------------------

LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 63), 2 ** 63 - 1),
                 st.text(max_size=12), st.binary(max_size=12))
ANY = st.recursive(LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                 st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4)),
                   max_leaves=12)
BY_TYPE = {str: st.text(max_size=16), int: st.integers(-(2 ** 63), 2 ** 63 - 1),
           bool: st.booleans(), bytes: st.binary(max_size=32),
           list: st.lists(ANY, max_size=5), dict: st.dictionaries(st.text(max_size=6), ANY,
                                                                  max_size=4)}
# Fields that are not required by the wire check but that some handler reads.
OPTIONAL = ["status", "head", "body", "length", "abort", "text", "bytes", "scheme",
            "seq", "epoch", "results", "error", "state", "members", "info", "changes",
            "credit", "conns", "group", "actions", "more", "id", "rid", "code", "reason"]


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(k for k in wire.SCHEMA)))
    env: dict[str, Any] = {name: draw(BY_TYPE[typ]) for name, typ in wire.SCHEMA[kind].items()}
    for name in draw(st.lists(st.sampled_from(OPTIONAL), max_size=4, unique=True)):
        if name not in env:
            env[name] = draw(ANY)
    env["k"] = kind
    return env


def valid(envs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The envelopes as a peer's frame would arrive, or skip what msgpack refuses."""
    try:
        return wire.decode_frame(wire.encode([dict(e) for e in envs]))
    except (WireError, OverflowError, ValueError, TypeError):
        assume(False)
        raise  # unreachable: assume raised


Feed = Callable[[list[dict[str, Any]]], None]  # a process's dispatch of one frame


class Loop:
    """A loop to run what the handlers schedule, recording any error it reports."""

    def __init__(self) -> None:
        import uvloop
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.errors: list[Any] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.errors.append(ctx))

    def settle(self) -> None:
        for _ in range(3):
            self.loop.run_until_complete(asyncio.sleep(0))  # run what was scheduled


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[Feed, Loop]]:
    from cluster.gateway.dispatch import Dispatcher
    from cluster.gateway.ws_hub import WebSocketHub
    from loadtests.bench.micro import FramePump
    loop = Loop()
    dispatcher = Dispatcher(loop.loop, "gw-fuzz", request_timeout=30.0, peer_expiry=10.0,
                            max_queue=64)
    dispatcher.pump = FramePump()
    dispatcher.hub = WebSocketHub(loop.loop, "gw-fuzz", dispatcher, max_queue=1 << 16,
                                  ping_interval=20.0, ping_timeout=20.0, open_timeout=30.0)
    yield (lambda envs: dispatcher.on_messages(b"peer@gw-fuzz", envs)), loop
    loop.loop.close()


@pytest.fixture(scope="module")
def worker() -> Iterator[tuple[Feed, Loop]]:
    from cluster.plumbing.config import WorkerConfig
    from cluster.worker.gateway_link import GatewayLink
    from cluster.worker.loader import load_handler
    from cluster.worker.server import Worker

    loop = Loop()
    ctx: zmq.Context[Any] = zmq.Context()
    handler = "tests.apps.handlers:app"
    w = Worker(WorkerConfig(handler=handler, threads=1, insecure=True), loop.loop, ctx,
               load_handler(handler), "wk-fuzz")
    # A real link whose socket connects to a port where nothing listens: what the
    # worker answers queues in ZeroMQ, unsent.
    link = GatewayLink("gw-fuzz", "tcp://127.0.0.1:1", b"", worker_id=w.id, config=w.config,
                       loop=loop.loop, zmq_context=ctx, security=w.security, runner=w.runner,
                       push=w.push, etcd_state=None)
    yield (lambda envs: link.on_messages(None, envs)), loop
    link.close()
    w.runner.close(timeout=1.0)
    loop.loop.close()
    ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def coordinator() -> Iterator[tuple[Feed, Loop]]:
    from cluster.coordinator.server import Coordinator
    from cluster.plumbing.config import CoordinatorConfig
    loop = Loop()
    ctx: zmq.Context[Any] = zmq.Context()
    coord = Coordinator(CoordinatorConfig(coordinator_bind="tcp://127.0.0.1:0",
                                          state_bind="tcp://127.0.0.1:0"), ctx)
    coord.start(loop.loop)
    yield (lambda envs: coord.on_messages(b"peer", envs)), loop
    coord.close()
    loop.loop.close()
    ctx.destroy(linger=0)


@pytest.mark.parametrize("process", ["gateway", "worker", "coordinator"])
@FUZZ
@given(envs=st.lists(envelopes(), min_size=1, max_size=4))
@pytest.mark.slow
def test_dispatch_takes_any_valid_envelope(request: pytest.FixtureRequest, process: str,
                                           envs: list[dict[str, Any]]) -> None:
    feed, loop = request.getfixturevalue(process)
    feed(valid(envs))
    loop.settle()
    assert loop.errors == []
