"""Flow control for streamed responses: a worker sends at most WINDOW bytes of a
stream that its client has not taken yet.

The gateway sends STREAM_CREDIT (`id`, `bytes`) once it has handed a part to a
client connection that is not backed up, or later, when that connection drains;
so the credit flows at the client's speed, and a slow or stalled client holds the
stream's producer (a generator, a thread, an ASGI app) instead of filling the
gateway's memory. GONE (the client left) ends the wait at once; the producer is
stopped and the stream ended with an abort, which returns the request's dispatch
credit to the gateway.

A window is waited on from the loop (async producers) or from a pool thread
(sync generators), so it has both an asyncio.Event and a threading.Condition.
"""

from __future__ import annotations

import asyncio
import threading

WINDOW = 512 * 1024  # bytes in flight per stream before its producer waits


class StreamWindow:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.unacked = 0
        self.gone = False
        self._cond = threading.Condition()
        self._event = asyncio.Event()  # set on the loop thread only

    # -- the gateway's side (loop thread) ----------------------------------------------
    def credit(self, nbytes: int) -> None:
        with self._cond:
            self.unacked -= nbytes
            self._cond.notify_all()
        self._event.set()

    def client_gone(self) -> None:
        with self._cond:
            self.gone = True
            self._cond.notify_all()
        self._event.set()

    # -- the producer's side ------------------------------------------------------------
    def sent(self, nbytes: int) -> None:
        with self._cond:
            self.unacked += nbytes

    def blocked(self) -> bool:
        return self.unacked > WINDOW and not self.gone

    async def wait(self) -> None:
        """On the loop: until the stream may go on (or its client is gone)."""
        while self.blocked():
            self._event.clear()
            await self._event.wait()

    def wait_sync(self, timeout: float) -> bool:
        """In a pool thread: the same; False if `timeout` passed still blocked."""
        with self._cond:
            return self._cond.wait_for(lambda: not self.blocked(), timeout)


class Streams:
    """A worker's streams being sent, by (gateway id, request id): their windows."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.windows: dict[tuple[str, int], StreamWindow] = {}

    def open(self, gateway_id: str, rid: int) -> StreamWindow:
        window = StreamWindow(self.loop)
        self.windows[(gateway_id, rid)] = window  # one dict store: pool threads call this
        return window

    def close(self, gateway_id: str, rid: int) -> None:
        self.windows.pop((gateway_id, rid), None)

    def credit(self, gateway_id: str, rid: int, nbytes: int) -> None:
        window = self.windows.get((gateway_id, rid))
        if window is not None:
            window.credit(nbytes)

    def client_gone(self, gateway_id: str, rid: int) -> None:
        window = self.windows.get((gateway_id, rid))
        if window is not None:
            window.client_gone()
