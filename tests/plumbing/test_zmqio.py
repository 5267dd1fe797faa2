"""The ZeroMQ pump on a real socket pair (inproc): frames in, envelopes out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import zmq

from cluster.plumbing import wire
from cluster.plumbing.zmqio import Monitor, Pump


def run(test: Any) -> None:
    asyncio.run(asyncio.wait_for(test(), 10))


def pair(ctx: zmq.Context[Any], name: str) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind(f"inproc://{name}")
    b.connect(f"inproc://{name}")
    return a, b


class Quiet:
    """A pump's receiver that takes nothing."""

    def on_messages(self, _peer: bytes | None, _msgs: list[dict[str, Any]]) -> None:
        pass

    def on_send_error(self, _peer: bytes | None, _msgs: list[dict[str, Any]]) -> None:
        pass


def test_a_handler_that_raises_costs_one_frame_not_the_loop(
        caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        ours, theirs = pair(ctx, "guard")
        got: list[list[dict[str, Any]]] = []
        done = asyncio.Event()

        class Receiver(Quiet):
            def on_messages(self, _peer: bytes | None, msgs: list[dict[str, Any]]) -> None:
                if msgs[0]["k"] == wire.WHO:
                    raise KeyError("id")  # a handler's bug on a valid envelope
                got.append(msgs)
                done.set()

        pump = Pump(asyncio.get_running_loop(), ours, Receiver(), routed=False)
        theirs.send(wire.encode_one(wire.WHO))
        theirs.send(b"\xc1 not msgpack")
        theirs.send(wire.encode_one(wire.HEARTBEAT, id="x"))
        await done.wait()
        assert got == [[{"k": wire.HEARTBEAT, "v": wire.VERSION, "id": "x"}]]
        assert (pump.failed_frames, pump.bad_frames, pump.frames_in) == (1, 1, 2)
        pump.close()
        theirs.close(linger=0)
        ctx.term()

    run(go)
    assert "could not be handled" in caplog.text


def test_posts_in_one_pass_go_as_one_batch_frame() -> None:
    async def go() -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        ours, theirs = pair(ctx, "batch")
        pump = Pump(asyncio.get_running_loop(), ours, Quiet(), routed=False)
        for i in range(3):
            pump.post(wire.envelope(wire.HEARTBEAT, id=str(i)))
        await asyncio.sleep(0)  # one loop pass: the flush is scheduled for its end
        assert theirs.poll(1000)
        frames = [theirs.recv()]
        assert not theirs.poll(50)  # one frame, not three
        assert [m["id"] for m in wire.decode_frame(frames[0])] == ["0", "1", "2"]
        assert (pump.frames_out, pump.messages_out) == (1, 3)
        pump.close()
        theirs.close(linger=0)
        ctx.term()

    run(go)


def test_a_monitor_delivers_events_from_its_start() -> None:
    # Its descriptor had signalled before the loop watched it: without a first look,
    # the first events waited for a later edge (the gateway once missed disconnects).
    async def go() -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        server = ctx.socket(zmq.ROUTER)
        events: list[int] = []
        seen = asyncio.Event()
        monitor = Monitor(asyncio.get_running_loop(), server, zmq.EVENT_ACCEPTED,
                          lambda e: (events.append(e), seen.set()))
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client = ctx.socket(zmq.DEALER)
        client.connect(f"tcp://127.0.0.1:{port}")
        await seen.wait()
        assert events == [zmq.EVENT_ACCEPTED]
        monitor.close()
        for sock in (client, server):
            sock.close(linger=0)
        ctx.term()

    run(go)
