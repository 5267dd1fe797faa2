"""What every client connection of a gateway shares, HTTP/1.1 and HTTP/2 alike: the
limits, the way to the dispatcher, the counters, and the check of a worker's
response head.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from cluster.errors import BadResponseHead
from cluster.gateway import bundled, http_core, static
from cluster.gateway.body_budget import UNLIMITED, BodyBudget
from cluster.gateway.exchange import Exchange, Upstream
from cluster.gateway.framing import NO_BODY, body_framing
from cluster.gateway.h2_core import H2Limits
from cluster.gateway.http_core import HttpLimits
from cluster.gateway.static import Mount
from cluster.gateway.ws_core import WsOptions
from cluster.gateway.ws_hub import WebSocketHub
from cluster.plumbing.histogram import ShardedHistogram
from cluster.plumbing.http_fields import encode_fields, well_formed
from cluster.plumbing.response_parts import ABORT, BodyPart, End, ResponseHead, ResponsePart

log = logging.getLogger("cluster.gateway.http")


class ClientConnection(Protocol):
    """An HTTP/1.1 or HTTP/2 connection, as the gateway's timers and shutdown see it."""

    def check_timeouts(self, now: float) -> None: ...

    def shutdown(self) -> None: ...

    def close_now(self) -> None: ...


# End to end: from a request's last byte to its response's last byte, so it includes
# the hop to the worker and the handler. Fine buckets below 10 ms.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

FILE_CHUNK = 64 * 1024  # static files go out this much at a time
MAX_GOOD_HEADS = 1024  # header blocks remembered as well formed

# Parse errors by the status they are answered with, as the metrics name them.
ERROR_KINDS = {400: "bad_request", 408: "request_timeout", 413: "body_too_large",
               414: "uri_too_long", 431: "headers_too_large", 501: "not_implemented",
               505: "version_not_supported"}

# Refusals a client may retry in a moment say when.
ERROR_HEADERS = {503: [("retry-after", "1")]}


class ClientTimeouts:
    """How long a client may take at each phase of a connection (besides the header
    and keep-alive timeouts): each a flag, each answered by the connection."""

    __slots__ = ("body", "body_total", "send")

    def __init__(self, body: float = 20.0, body_total: float = 60.0,
                 send: float = 30.0) -> None:
        self.body = body  # a request body without a byte (408)
        self.body_total = body_total  # a request body from its headers to its end (408)
        self.send = send  # a client that reads nothing of what we send (closed)


class ConnectionContext:
    """What all connections of one gateway share, and what they count."""

    def __init__(self, limits: HttpLimits, upstream: Upstream,
                 header_timeout: float, keepalive_timeout: float, max_pipeline: int,
                 ws_options: WsOptions, hub: WebSocketHub | None = None, *,
                 gateway_id: str = "", access_log: bool = False,
                 scheme: str = "http",
                 static: list[Mount] | None = None,
                 h2: H2Limits | None = None, h2_stall_timeout: float = 30.0,
                 timeouts: ClientTimeouts | None = None,
                 budget: BodyBudget | None = None) -> None:
        self.limits = limits
        self.ws_options = ws_options
        self.hub = hub
        self.upstream = upstream  # the dispatcher: requests in, what became of them
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_pipeline = max_pipeline
        self.date = b""
        self.connections: set[ClientConnection] = set()  # those with timeouts to check
        self.open = 0  # client connections open, WebSockets included (--max-connections)
        self.next_conn = 0
        self.errors_by_status: dict[int, int] = {}
        self.gateway_id = gateway_id
        self.access_log = access_log
        self.tls = scheme == "https"
        self.static = static or []
        # End-to-end seconds of each finished response, by (method, status); every
        # connection runs on the loop's thread, so one shard of rows serves them all.
        self.latency = ShardedHistogram(DURATION_BUCKETS)
        self._rows = self.latency.shard()
        self.bytes_in = 0
        self.bytes_out = 0
        self.good_heads: set[bytes] = set()
        self.h2 = h2  # None: HTTP/1.1 only
        self.h2_stall_timeout = h2_stall_timeout
        self.h2_connections = 0  # connections that became HTTP/2
        self.h2_abusive = 0  # HTTP/2 connections sent GOAWAY for abuse
        self.h2_stalls = 0  # HTTP/2 streams or connections closed for a shut window
        self.timeouts = timeouts or ClientTimeouts()
        self.timed_out: dict[str, int] = {}  # clients cut for a timeout, by phase
        # Unfinished request bodies, all connections together (--max-body-buffer).
        self.budget = budget if budget is not None else BodyBudget(UNLIMITED)
        # A client that sent too much is told the limit and the flag; other refusals
        # keep the generic phrase.
        self.error_bodies = {413: b"Content Too Large: a request body here is at most %d "
                                  b"bytes (--max-body)\n" % limits.max_body}

    def error_body(self, status: int) -> bytes:
        body = self.error_bodies.get(status)
        return body if body is not None else http_core.status_body(status)

    def timed_out_in(self, phase: str) -> None:
        self.timed_out[phase] = self.timed_out.get(phase, 0) + 1

    def cut_unread(self, addr: list[Any], transport: asyncio.Transport) -> None:
        """A client that read nothing of what we sent for --send-timeout, over HTTP/1.1
        or HTTP/2: one line, one count, and a reset."""
        log.info("client %s:%s: read nothing of what we sent for %.0fs (--send-timeout); "
                 "closing", addr[0], addr[1], self.timeouts.send)
        self.timed_out_in("send")
        reset(transport)

    def remember_head(self, fields: bytes) -> None:
        """A header block found well formed: a handler answers with the same few all
        day, and a set lookup costs less than checking again."""
        if len(self.good_heads) >= MAX_GOOD_HEADS:
            self.good_heads.clear()
        self.good_heads.add(fields)

    def static_or_submit(self, ex: Exchange, method: str, target: str,
                         headers: list[tuple[str, str]]) -> static.FilePlan | None:
        """A request's first stop: a file the gateway serves itself (bundled.py), a file
        under --static (returned, for the connection to stream), a refusal about one
        (answered here), or a worker (submitted)."""
        if target.startswith(bundled.PREFIX):
            own = bundled.answer(method, target, headers)
            if own is not None:
                status, fields, body = own
                ex.sink.deliver(ex, ResponseHead(status, encode_fields(fields)[0], body, False))
                return None
        answer = static.plan(self.static, method, target, headers) if self.static else None
        if answer is None:
            self.upstream.submit(ex)
        elif isinstance(answer, static.Refusal):
            if answer.status == 304:
                ex.sink.deliver(ex, ResponseHead(304, encode_fields(answer.headers)[0], b"",
                                                 False))
            else:
                ex.sink.deliver_error(ex, answer.status, answer.headers)
        else:
            return answer
        return None

    def finished(self, ex: Exchange, now: float) -> None:
        self.latency.observe_in(self._rows, (ex.method, ex.status), now - ex.began)
        if self.access_log:
            log.info("%s %s %d %.1fms", ex.method, ex.envelope.get("target", "-"), ex.status,
                     (now - ex.began) * 1000,
                     extra={"request_id": f"{self.gateway_id}/{ex.id}" if ex.id else None})


def check_head(shared: ConnectionContext, ex: Exchange,
               part: ResponsePart) -> tuple[int, bytes] | None:
    """The response's first part, which must be a head: its status and header block
    checked; sets the exchange's status and how its body goes out (framing.py: for
    HTTP/1.1 and HTTP/2 alike). None for a broken one: logged, and the exchange's
    status is 502, which the caller answers."""
    try:
        if not isinstance(part, ResponseHead):
            raise BadResponseHead("a body part before the head")
        status = part.status
        fields = part.fields
        if type(status) is not int or not 100 <= status <= 999:
            raise BadResponseHead(f"status {status!r}")
        if type(fields) is not bytes:
            raise BadResponseHead("a malformed header block (not bytes)")
        if fields not in shared.good_heads:
            if not well_formed(fields):
                raise BadResponseHead("a malformed header block")
            shared.remember_head(fields)
    except BadResponseHead as exc:
        log.error("request %d: worker sent an invalid response (%s); 502", ex.id, exc,
                  extra={"request_id": f"{shared.gateway_id}/{ex.id}"})
        ex.status = 502
        ex.frame(NO_BODY)
        return None
    ex.status = status
    ex.frame(body_framing(ex.version, ex.method, status, len(part.body), part.more,
                          part.length))
    return status, fields


def reset(transport: asyncio.Transport) -> None:
    """Close a connection whose client reads nothing, with a reset: a plain close leaves
    what it would not read in the kernel, which goes on trying to send it for minutes
    (nginx's reset_timedout_connection)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def send_file(ex: Exchange, plan: static.FilePlan,
                    my_turn: Callable[[], Awaitable[bool]]) -> None:
    """Stream a --static file to `ex`'s sink a chunk at a time, each once `my_turn()`
    says the last has left for the client (False: the client is gone): memory stays
    one chunk. HTTP/1.1 and HTTP/2 differ only in what "my turn" means."""
    sink = ex.sink
    try:
        with open(plan.path, "rb") as f:
            f.seek(plan.offset)
            left = 0 if ex.method == "HEAD" else plan.length
            sink.deliver(ex, ResponseHead(plan.status, encode_fields(plan.headers)[0], b"",
                                          True, plan.length))
            while left > 0:
                if not await my_turn():
                    return
                chunk = f.read(min(FILE_CHUNK, left))
                if not chunk:  # the file shrank under us: the length is a lie now
                    sink.deliver(ex, ABORT)
                    return
                left -= len(chunk)
                sink.deliver(ex, BodyPart(chunk))
            sink.deliver(ex, End(b""))
    except OSError as exc:
        # Between plan and open the file can go or lose its permissions: an answer still.
        status = static.status_for(exc)
        log.info("static file %s: %s; %d", plan.path, exc.strerror, status)
        sink.deliver_error(ex, status)  # an abort, once the head has gone out
