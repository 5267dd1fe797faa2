"""TLS for client connections, with the handshake done where its failure is seen.

Theory of operation
-------------------
A server created with `ssl=` makes the TLS transport itself, and when a handshake
fails (plain HTTP sent to the HTTPS port, an old protocol, a scanner) uvloop drops
the connection without telling anyone: no log line, no count. So the gateway listens
for plain TCP and each connection starts as a `TlsAcceptor`, which stops reading,
runs the handshake with `loop.start_tls`, and then hands the TLS transport to the
real protocol (an `HttpConnection`), as if it had connected that way. A handshake
that fails or takes longer than the header timeout is one log line and one count.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

log = logging.getLogger("cluster.gateway.tls")


class TlsCounters:
    """What the gateway's metrics read: handshakes that failed."""

    def __init__(self) -> None:
        self.failed = 0


class TlsAcceptor(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, context: ssl.SSLContext,
                 make_protocol: Callable[[], asyncio.Protocol], timeout: float,
                 counters: TlsCounters) -> None:
        self.loop = loop
        self.context = context
        self.make_protocol = make_protocol
        self.timeout = timeout
        self.counters = counters
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Nothing may be read before the TLS layer reads it: the ClientHello is its.
        transport.pause_reading()  # type: ignore[attr-defined]
        self._task = self.loop.create_task(self._handshake(transport))

    async def _handshake(self, transport: Any) -> None:
        peer = transport.get_extra_info("peername") or ("?", 0)
        protocol = self.make_protocol()
        try:
            tls = await self.loop.start_tls(transport, protocol, self.context,
                                            server_side=True,
                                            ssl_handshake_timeout=self.timeout)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self.counters.failed += 1
            log.info("client %s:%s: TLS handshake failed: %s", peer[0], peer[1],
                     _reason(exc))
            transport.close()
            return
        if tls is None:  # the connection closed while the handshake ran
            return
        protocol.connection_made(tls)

    def connection_lost(self, exc: Exception | None) -> None:
        """Only before the handshake took the transport over."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.__class__.__name__
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        return "no handshake in time"
    return exc.__class__.__name__
