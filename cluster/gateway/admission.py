"""--max-connections: what a gateway does with one connection too many.

It answers 503 with Retry-After at once and closes, rather than leaving the
connection unaccepted in the kernel's backlog: the client (or the load balancer in
front) learns now that this gateway is full and can go elsewhere, instead of
waiting for a timeout; and our open sockets, hence memory and file descriptors,
stay bounded. The cost is an accept and one write per refused connection. Over TLS
nothing can be said before a handshake we refuse to spend on it: the connection is
closed.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("cluster.gateway")

REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
           b"retry-after: 1\r\ncontent-length: 33\r\nconnection: close\r\n\r\n"
           b"Service Unavailable: at capacity\n")
LINGER = 1.0  # seconds a refused client may take to read the answer before we close


class Admission:
    """Counts refusals, and logs one line when refusing starts and when it stops."""

    def __init__(self, limit: int, tls: bool) -> None:
        self.limit = limit
        self.tls = tls
        self.refused = 0
        self._episode = 0  # refused since the limit was last reached

    def full(self, open_connections: int) -> bool:
        if open_connections < self.limit:
            if self._episode:
                log.info("below --max-connections again; %d connections were refused",
                         self._episode)
                self._episode = 0
            return False
        if not self._episode:
            log.warning("at --max-connections (%d): new connections get 503 and are closed",
                        self.limit)
        self._episode += 1
        self.refused += 1
        return True

    def refusal(self) -> asyncio.Protocol:
        return Refused(self.tls)


class Refused(asyncio.Protocol):
    """Answer 503, shut our side, and close when the client has read it (its FIN) or
    after LINGER: closing at once, with its request unread, would reset the
    connection and could destroy the answer before the client reads it."""

    def __init__(self, tls: bool) -> None:
        self.tls = tls
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.tls:
            transport.close()
            return
        writer: asyncio.Transport = transport  # type: ignore[assignment]  # uvloop's
        writer.write(REFUSAL)
        if writer.can_write_eof():
            writer.write_eof()
        self.timer = asyncio.get_running_loop().call_later(LINGER, writer.close)

    def data_received(self, data: bytes) -> None:
        pass  # its request: read and dropped, so the close is not a reset

    def eof_received(self) -> bool | None:
        return False  # it has read our answer and is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
