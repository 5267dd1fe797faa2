"""Envelopes: round trips, batches, and every way a frame can be wrong."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest

from cluster.errors import WireError
from cluster.plumbing import wire


def req(**over: Any) -> dict[str, Any]:
    msg = wire.envelope(wire.REQUEST, id=1, conn=2, method="GET", target="/", version="1.1",
                        headers=[["host", "x"]], body=b"", addr=["127.0.0.1", 5])
    msg.update(over)
    return msg


def test_single_round_trip() -> None:
    [back] = wire.decode_frame(wire.encode([req()]))
    assert back["k"] == wire.REQUEST and back["v"] == wire.VERSION and back["body"] == b""


def test_batch_round_trip_keeps_order() -> None:
    frame = wire.encode([req(id=i) for i in range(5)])
    assert [m["id"] for m in wire.decode_frame(frame)] == [0, 1, 2, 3, 4]


def test_encode_one() -> None:
    [back] = wire.decode_frame(wire.encode_one(wire.HEARTBEAT, id="w"))
    assert back == {"k": wire.HEARTBEAT, "v": wire.VERSION, "id": "w"}


def bad(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


@pytest.mark.parametrize("frame", [
    b"",
    b"\xc1",  # never used in msgpack
    b"\x92\x01",  # truncated array
    bad([1, 2]),
    bad({"v": wire.VERSION + 1, "k": "heartbeat", "id": "x"}),
    bad({"k": "heartbeat", "id": "x"}),
    bad({"v": wire.VERSION, "k": "nope"}),
    bad({"v": wire.VERSION, "k": 5}),
    bad({"v": wire.VERSION, "k": "heartbeat"}),
    bad({"v": wire.VERSION, "k": "heartbeat", "id": 7}),
    bad({"v": wire.VERSION, "k": "response", "id": True, "more": False}),
    bad({"v": wire.VERSION, "k": "response", "id": 1, "more": 0}),
    bad({"v": wire.VERSION, "k": "batch", "m": "x"}),
    bad({"v": wire.VERSION, "k": "batch", "m": [{"k": "heartbeat", "id": "a"}, 3]}),
    bad({1: 2}),
], ids=["empty", "reserved-byte", "truncated", "array", "version", "no-version",
        "unknown-kind", "kind-not-str", "missing-field", "field-type", "bool-as-int",
        "int-as-bool", "batch-not-list", "batch-item", "int-key"])
def test_bad_frames_raise_wire_error_only(frame: bytes) -> None:
    with pytest.raises(WireError):
        wire.decode_frame(frame)


def test_frame_size_limit() -> None:
    frame = wire.encode([req(body=b"x" * 1000)])
    wire.decode_frame(frame, max_frame=len(frame))
    with pytest.raises(WireError, match="exceeds"):
        wire.decode_frame(frame, max_frame=len(frame) - 1)


def test_random_bytes_never_escape_as_another_exception() -> None:
    import random
    rng = random.Random(1234)
    good = wire.encode([req(), req(id=2)])
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.randint(0, len(data))
        with contextlib.suppress(WireError):
            wire.decode_frame(bytes(data[:cut]))


# -- WebSocket actions --------------------------------------------------------------------

def test_every_builder_makes_an_action_the_gateway_accepts() -> None:
    built = [wire.accept(1, None, [["x-a", "b"]], "room:1"), wire.accept(1, "chat", []),
             wire.reject(1, 403), wire.reject(1, 401, b"who?"), wire.send(1, "t"),
             wire.send(1, b"b"), wire.close(1, 1000), wire.join(1, "g"), wire.leave(1, "g"),
             wire.subscribe(1, "g"), wire.subscribe(1, "g", "e", 3), wire.ack(1, 2),
             wire.broadcast("g", "t"), wire.broadcast("g", b"b", 7)]
    assert {a[0] for a in built} == set(wire.ACTIONS)
    for action in built:
        assert wire.check_action(action) is None, action


@pytest.mark.parametrize(("action", "fault"), [
    ("send", "not a list"),
    ([], "not a list"),
    (["explode", 1], "unknown action 'explode'"),
    ([3, 1], "unknown action 3"),
    (["send", 1], "send: 1 fields, not 2"),
    (["send", "1", "x"], "send: str where"),
    (["send", True, "x"], "send: bool where"),  # a bool is not a connection number
    (["send", 1, 5], "send: int where"),
    (["close", 1, 1000, None], "close: NoneType where"),
    (["broadcast", "g", "x", "all"], "broadcast: str where"),
])
def test_malformed_actions_are_named(action: object, fault: str) -> None:
    found = wire.check_action(action)
    assert found is not None and found.startswith(fault)
