"""Flow control for streamed responses: a worker sends at most WINDOW bytes of a
stream that its client has not taken yet.

The gateway sends STREAM_CREDIT (`id`, `bytes`) once it has handed a part to a
client connection that is not backed up, or later, when that connection drains;
so the credit flows at the client's speed, and a slow or stalled client holds the
stream's producer (a generator, a thread, an ASGI app) instead of filling the
gateway's memory. GONE (the client left) ends the wait at once; the producer is
stopped and the stream ended with an abort, which returns the request's dispatch
credit to the gateway.

Every stream is sent from the loop, so a window is the loop's alone: a sync
generator's parts are drawn on a pool thread one at a time and sent from the loop
(cluster/worker/requests.py), like an async one's. `pace` is the one wait under the
window, for native handlers and ASGI apps alike.
"""

from __future__ import annotations

import asyncio

WINDOW = 512 * 1024  # bytes in flight per stream before its producer waits


class StreamWindow:
    def __init__(self) -> None:
        self.unacked = 0
        self.gone = False
        self._event = asyncio.Event()

    # -- the gateway's side ------------------------------------------------------------
    def credit(self, nbytes: int) -> None:
        self.unacked -= nbytes
        self._event.set()

    def client_gone(self) -> None:
        self.gone = True
        self._event.set()

    # -- the producer's side ------------------------------------------------------------
    def sent(self, nbytes: int) -> None:
        self.unacked += nbytes

    def blocked(self) -> bool:
        return self.unacked > WINDOW and not self.gone

    async def wait(self) -> None:
        """Until the stream may go on (or its client is gone)."""
        while self.blocked():
            self._event.clear()
            await self._event.wait()

    async def pace(self, stall_timeout: float) -> bool:
        """After a part is sent: wait while the window is full. False if the client
        took nothing for `stall_timeout` seconds; the stream is then cut (gone)."""
        if not self.blocked():
            return True
        try:
            await asyncio.wait_for(self.wait(), stall_timeout)
        except TimeoutError:
            self.client_gone()
            return False
        return True


class Streams:
    """A worker's streams being sent, by (gateway id, request id): their windows."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, int], StreamWindow] = {}

    def open(self, gateway_id: str, rid: int) -> StreamWindow:
        window = StreamWindow()
        self.windows[(gateway_id, rid)] = window
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
