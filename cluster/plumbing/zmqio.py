"""Drive a non-blocking ZeroMQ socket from an asyncio loop, batching per loop pass.

Theory of operation
-------------------
`zmq.asyncio` creates a future per receive, which halves throughput. Instead the
loop watches the socket's file descriptor with `add_reader`. That descriptor is
edge-triggered and says only "look at ZMQ_EVENTS", so each wake-up drains every
frame that is ready, up to `max_batch` frames or `PASS_BUDGET` seconds of work,
then yields the loop and continues. The time budget matters: one broadcast frame
can mean a thousand socket writes, and a backlog of them drained in one pass once
starved the heartbeat timer for seconds, so the coordinator dropped a live gateway.

Outgoing envelopes are queued per destination and flushed once, at the end of the
current loop pass, each destination's queue packed into a single frame. A send can
consume the read edge, so after every flush the socket's EVENTS are checked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from cluster.errors import WireError
from cluster.plumbing import wire

log = logging.getLogger("cluster.zmq")

# One frame carries at most this many envelopes and about this many payload bytes.
# 32 measured best with 64 HTTP connections: smaller frames let the peer start on
# the first ones while we still read; the byte cap keeps a burst of large bodies
# from building one huge frame.
MAX_FRAME_MESSAGES = 32
MAX_FRAME_BYTES = 1 << 20
# Longest a read pass runs before timers and other sockets get their turn.
PASS_BUDGET = 0.02


class Receiver(Protocol):
    """Whoever a pump hands its socket's messages to: the gateway's `Dispatcher`, the
    worker's `GatewayLink`, the `Coordinator`, a `CoordinatorLink`, a worker's
    `StateClient` (for the coordinator's published updates)."""

    def on_messages(self, peer: bytes | None, messages: list[dict[str, Any]]) -> None:
        """One frame's envelopes; `peer` is the sender's identity on a ROUTER, else None."""

    def on_send_error(self, peer: bytes | None, messages: list[dict[str, Any]]) -> None:
        """A frame for `peer` could not be sent (gone, or not keeping up): what that
        means is the receiver's to say."""


def bind(sock: zmq.Socket[Any], endpoint: str, flag: str) -> None:
    """Bind, or an OSError that names the endpoint and its flag ("Address already in
    use" alone leaves a user guessing which of a process's ports it was)."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise OSError(exc.errno, f"{endpoint} ({flag}): {os.strerror(exc.errno or 0)}") from None


def advertised(endpoint: str, advertise_host: str) -> str:
    """The endpoint peers should connect to, for one we bound (maybe on a wildcard)."""
    scheme, _, rest = endpoint.partition("://")
    host, _, port = rest.rpartition(":")
    if advertise_host:
        host = advertise_host
    elif host in ("0.0.0.0", "*", "[::]", "::"):
        host = socket.gethostname()
    return f"{scheme}://{host}:{port}"


def fd_of(sock: zmq.Socket[bytes]) -> int:
    """The socket's notification descriptor, for `loop.add_reader`."""
    return int(sock.getsockopt(zmq.FD))


# Plain ints: pyzmq's enum members make each `&` and each call pay for enum.py.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_SEND_PART = int(zmq.NOBLOCK | zmq.SNDMORE)
# pyzmq's own send and receive, beneath the Python layer of `zmq.Socket`
# (send_multipart and recv_multipart are loops in Python over these, and the calls
# below cost a fifth of that when this module is compiled).
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get


def has_input(sock: zmq.Socket[bytes]) -> bool:
    """Whether a frame can be received now (the FD only says "look again")."""
    return bool(_get(sock, _EVENTS) & _POLLIN)  # type: ignore[operator]  # an int


def receive_parts(sock: zmq.Socket[bytes]) -> list[bytes]:
    """One whole message's parts, without blocking: `recv_multipart(NOBLOCK)`. Raises
    zmq.Again when there is none (a message's parts arrive together)."""
    parts: list[bytes] = [_recv(sock, _NOBLOCK)]
    while _get(sock, _RCVMORE):
        parts.append(_recv(sock, _NOBLOCK))
    return parts


def send_frame(sock: zmq.Socket[bytes], frame: bytes, to: bytes | None = None) -> None:
    """One frame, to the peer `to` on a ROUTER, without blocking: `send(NOBLOCK)` or
    `send_multipart((to, frame), NOBLOCK)`. Raises zmq.ZMQError as they do."""
    if to is not None:
        _send(sock, to, _SEND_PART)
    _send(sock, frame, _NOBLOCK)


class Outbox(Protocol):
    """What a sender needs of a pump: queue a message (for a peer, on a ROUTER) and
    send what is queued. The microbenchmark's frame counter is one too."""

    def post(self, msg: dict[str, Any], to: bytes | None = None) -> None: ...

    def flush(self) -> None: ...


class Pump:
    """Reads and writes one ZeroMQ socket on the loop; `routed` for ROUTER sockets."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: zmq.Socket[bytes],
        receiver: Receiver,
        *,
        routed: bool,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        max_batch: int = 1024,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.receiver = receiver
        self.routed = routed
        self.max_frame = max_frame
        self.max_batch = max_batch
        self.bad_frames = 0
        self.failed_frames = 0  # decoded, but a handler raised on them
        self.frames_in = 0
        self.messages_in = 0
        self.frames_out = 0
        self.messages_out = 0
        self._outbox: dict[bytes | None, list[dict[str, Any]]] = {}
        self._outbox_bytes = 0
        self._flush_scheduled = False
        self._closed = False
        self._fd = fd_of(sock)
        loop.add_reader(self._fd, self._on_readable)
        # Frames may already be waiting (the edge fired before we watched it).
        loop.call_soon(self._on_readable)

    # -- receiving ---------------------------------------------------------
    def _on_readable(self) -> None:
        if self._closed:
            return
        sock = self.sock
        budget_end = time.monotonic() + PASS_BUDGET
        for _ in range(self.max_batch):
            if time.monotonic() > budget_end:
                break
            try:
                if not has_input(sock):
                    return
                parts = receive_parts(sock)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                if self._closed:
                    return
                log.warning("zmq receive failed: %s", exc)
                return
            self._deliver(parts)
            if self._closed:
                return
        # More may be waiting: let other callbacks run, then continue draining.
        self.loop.call_soon(self._on_readable)

    def _deliver(self, parts: list[bytes]) -> None:
        if self.routed:
            if len(parts) != 2:
                self._bad(f"{len(parts)} parts on a routed socket")
                return
            peer: bytes | None = parts[0]
            payload = parts[1]
        else:
            if len(parts) != 1:
                self._bad(f"{len(parts)} parts")
                return
            peer = None
            payload = parts[0]
        try:
            messages = wire.decode_frame(payload, self.max_frame)
        except WireError as exc:
            self._bad(str(exc))
            return
        self.frames_in += 1
        self.messages_in += len(messages)
        try:
            self.receiver.on_messages(peer, messages)
        except Exception:
            # The one guard for every process's message dispatch: an envelope valid
            # on the wire that a handler still could not take costs one log line,
            # never the loop (the rest of that frame is lost with it).
            self.failed_frames += 1
            log.exception("a frame of %d envelopes could not be handled; dropped",
                          len(messages))

    def _bad(self, why: str) -> None:
        self.bad_frames += 1
        log.warning("dropped a malformed frame: %s", why)

    # -- sending -----------------------------------------------------------
    def post(self, msg: dict[str, Any], to: bytes | None = None) -> None:
        """Queue one envelope for `to` (the peer identity on a ROUTER)."""
        if self._closed:
            return
        box = self._outbox.get(to)
        if box is None:
            self._outbox[to] = box = []
        box.append(msg)
        body = msg.get("body")
        if body is not None:
            self._outbox_bytes += len(body)
        if len(box) >= MAX_FRAME_MESSAGES or self._outbox_bytes >= MAX_FRAME_BYTES:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._closed or not self._outbox:
            return
        outbox, self._outbox = self._outbox, {}
        self._outbox_bytes = 0
        sock = self.sock
        for to, msgs in outbox.items():
            frame = wire.encode(msgs)
            self.frames_out += 1
            self.messages_out += len(msgs)
            try:
                send_frame(sock, frame, to)
            except zmq.ZMQError as exc:
                # EHOSTUNREACH (ROUTER_MANDATORY, peer gone) or EAGAIN (peer not
                # keeping up): the caller decides what failing these means.
                log.debug("send to %r failed: %s", to, exc)
                self.receiver.on_send_error(to, msgs)
        # Sending may have consumed the read edge; look again.
        try:
            if has_input(self.sock):
                self.loop.call_soon(self._on_readable)
        except zmq.ZMQError:
            pass

    def close(self, linger: float = 0.0) -> None:
        """Stop; what is queued for a peer still goes for up to `linger` seconds."""
        if self._closed:
            return
        self.flush()
        log.debug("closing: in %d frames/%d messages, out %d frames/%d messages",
                 self.frames_in, self.messages_in, self.frames_out, self.messages_out)
        self._closed = True
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self._fd)
        self.sock.close(linger=int(linger * 1000))


class Monitor:
    """A socket's events (libzmq's monitor), delivered on the loop: `on_event(event)`
    for each. A socket has one monitor, so a process asks for every event it wants
    in one `events` mask."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket[bytes], events: int,
                 on_event: Callable[[int], None]) -> None:
        self.loop = loop
        self.on_event = on_event
        self.closed = False
        self.sock = sock.get_monitor_socket(events)
        self._fd = fd_of(self.sock)
        loop.add_reader(self._fd, self._readable)
        # The descriptor's edge may have fired before we watched it (see Pump).
        loop.call_soon(self._readable)

    def _readable(self) -> None:
        while not self.closed and has_input(self.sock):
            frames = self.sock.recv_multipart(_NOBLOCK)
            if len(frames) == 2 and len(frames[0]) == 6:
                self.on_event(int.from_bytes(frames[0][:2], "little"))

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self._fd)
        self.sock.close(linger=0)
