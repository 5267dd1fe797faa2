"""TLS for client connections, set up where a failed handshake can be seen.

Theory of operation
-------------------
A server created with `ssl=` makes the TLS layer itself, and when a handshake fails
(plain HTTP sent to the HTTPS port, an old protocol, a scanner) uvloop drops the
connection without telling anyone: no log line, no count. So the gateway listens for
plain TCP, and each connection starts as a `TlsAcceptor`, which puts the standard
library's TLS protocol (`asyncio.sslproto.SSLProtocol`, what `loop.start_tls` uses)
between the transport and the real protocol at once, in `connection_made`: nothing
can be read before the TLS layer is there (an earlier try, `loop.start_tls` from a
task, lost the bytes a client sends at once). The handshake's outcome arrives on a
future: a failure, or no handshake within the header timeout, is one log line and
one count; success calls the real protocol's `connection_made`, as if it had
connected that way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from asyncio import sslproto
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
        self.tls: Any = None  # the SSLProtocol, from connection_made on

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername") or ("?", 0)
        waiter = self.loop.create_future()
        # Whole seconds: the standard library's protocol is typed for them.
        self.tls = sslproto.SSLProtocol(self.loop, self.make_protocol(), self.context, waiter,
                                        server_side=True,
                                        ssl_handshake_timeout=max(1, math.ceil(self.timeout)))
        transport.set_protocol(self.tls)
        self.tls.connection_made(transport)
        waiter.add_done_callback(lambda done: self._handshake_done(done, peer))

    def _handshake_done(self, done: asyncio.Future[Any], peer: Any) -> None:
        exc = done.exception() if not done.cancelled() else None
        if exc is not None:
            self.counters.failed += 1
            log.info("client %s:%s: TLS handshake failed: %s", peer[0], peer[1], _reason(exc))

    # A read already under way when the TLS layer took over still comes here.
    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            buffer = self.tls.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            self.tls.buffer_updated(size)
            view = view[size:]

    def eof_received(self) -> bool | None:
        return self.tls.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.tls.connection_lost(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.__class__.__name__
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        return "no handshake in time"
    return exc.__class__.__name__
