"""The asyncio side of one HTTP/1.1 client connection.

Per-connection state lives here (transport, pipeline, flow control, timers); each
request's state lives in its `Exchange`. Bytes go to the sans-I/O `HttpCore`; every
complete request becomes an Exchange handed to the dispatcher. Responses may come
back in any order and in several parts: the one at the head of the pipeline is
written as it arrives, later ones wait in their exchange until it is their turn.

Timers are not per request: the gateway sweeps every connection a few times a
second (`check_timeouts`) for an idle keep-alive, a header block that is late, a body
that stalls or is late as a whole (408), and a client that reads nothing of what we
send (cut, its unsent bytes dropped).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from functools import partial
from typing import Any

from cluster.gateway import http_core, sse_core
from cluster.gateway.client_context import (
    ERROR_HEADERS,
    ConnectionContext,
    check_head,
    send_file,
)
from cluster.gateway.exchange import Exchange
from cluster.gateway.framing import body_framing
from cluster.gateway.h2_connection import H2Connection
from cluster.gateway.h2_core import PREFACE
from cluster.gateway.http_core import (
    CONTINUE_RESPONSE,
    ContinueExpected,
    HttpCore,
    ProtocolError,
    Request,
)
from cluster.gateway.ws_core import WebSocketCore, is_websocket_upgrade
from cluster.gateway.ws_session import Session
from cluster.plumbing import wire
from cluster.plumbing.http_fields import encode_fields
from cluster.plumbing.response_parts import (
    ABORT,
    Abort,
    ResponseHead,
    ResponsePart,
    is_final,
)

log = logging.getLogger("cluster.gateway.http")


class HttpConnection(asyncio.Protocol):
    def __init__(self, shared: ConnectionContext, loop: asyncio.AbstractEventLoop) -> None:
        self.shared = shared
        self.loop = loop
        self.core = HttpCore(shared.limits, shared.budget)
        self.transport: asyncio.Transport | None = None
        self.exchanges: deque[Exchange] = deque()
        self.closed = False
        self.closing = False  # answer what is in flight, then close
        self.reading_paused = False
        self.writing_paused = False
        self.last_activity = 0.0
        self.request_began = 0.0
        # When the sweep first saw request number `body_of` waiting for its body (at most
        # a sweep period late: the timers keep the per-request path free of clock reads).
        self.body_of = -1
        self.body_began = 0.0
        self.paused_since = 0.0  # when the client last stopped taking our bytes
        shared.next_conn += 1
        self.conn_id = shared.next_conn
        self.addr: list[Any] = ["", 0]
        self.ws: Session | None = None  # set once this connection became a WebSocket
        self.pending_upgrade: Request | None = None  # behind pipelined requests
        # A response finished, or the client drained: made by the first file sender
        # that waits for its turn (an Event and its deque are 0.7 KiB a connection).
        self._turn: asyncio.Event | None = None
        self._owed: list[tuple[Exchange, int]] = []  # stream credit held while backed up
        # Until the first bytes show whether this is HTTP/2 with prior knowledge.
        self.preface: bytes | None = b"" if shared.h2 is not None and not shared.tls else None

    # -- asyncio callbacks ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.addr = [str(peer[0]), int(peer[1])]
        self.last_activity = self.loop.time()
        self.shared.connections.add(self)
        self.shared.open += 1
        if self.shared.h2 is not None and self.shared.tls:
            tls = transport.get_extra_info("ssl_object")
            if tls is not None and tls.selected_alpn_protocol() == "h2":
                self._become_h2(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.open -= 1
        self.core.close()  # what an unfinished body held goes back to the budget
        if self.ws is not None and self.shared.hub is not None:
            self.shared.hub.connection_lost(self.ws)
        self.closed = True
        self._wake()
        self.shared.connections.discard(self)
        upstream = self.shared.upstream
        for ex in self.exchanges:
            if not ex.done and ex.worker is not None:
                upstream.client_gone(ex)
        self.exchanges.clear()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.paused_since = self.loop.time()
        self._update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._update_reading()
        self._wake()
        owed, self._owed = self._owed, []
        upstream = self.shared.upstream
        for ex, nbytes in owed:
            upstream.stream_credit(ex, nbytes)

    async def _my_turn(self, ex: Exchange) -> bool:
        """A file sender's wait: until this response is the one being written and the
        client has drained the last chunk. False once the connection is closed."""
        while not self.closed and (self.writing_paused or not self.exchanges
                                   or self.exchanges[0] is not ex):
            if self._turn is None:
                self._turn = asyncio.Event()
            self._turn.clear()
            await self._turn.wait()
        return not self.closed

    def _wake(self) -> None:
        if self._turn is not None:
            self._turn.set()

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        self.last_activity = now
        if self.preface is not None:  # the connection's first bytes: HTTP/2's preface?
            data = self.preface + data
            if PREFACE.startswith(data[:len(PREFACE)]) and self.shared.h2 is not None:
                if len(data) < len(PREFACE):
                    self.preface = data  # not enough to tell yet
                    return
                self._become_h2(data)
                return
            self.preface = None
        self.shared.bytes_in += len(data)
        # A local, not `self.ws`: mypy would take `self.ws` to be None for the rest of
        # this method, though a request below can make it a WebSocket, and the compiled
        # build checks what mypy takes for granted.
        ws = self.ws
        if ws is not None:
            if ws.accepted and self.shared.hub is not None:
                self.shared.hub.on_events(ws, ws.core.receive_data(data))
            return  # before the worker accepts, a client must not send frames
        core = self.core
        if not core.mid_request:
            self.request_began = now
        for event in core.receive_data(data):
            if type(event) is Request:
                self._on_request(event, now)
            elif type(event) is ContinueExpected:
                # Only when nothing is ahead of it, or 100 would split a response.
                if not self.exchanges and self.transport is not None:
                    self.transport.write(CONTINUE_RESPONSE)
            elif isinstance(event, ProtocolError):
                self._on_protocol_error(event)
        if core.upgraded and not self.closing and self.ws is None and \
                self.pending_upgrade is None:
            # No protocol switch here: answer the request, then close.
            self.closing = True
            if self.exchanges:
                self.exchanges[-1].must_close()
            else:
                self._close()

    def _become_h2(self, data: bytes) -> None:
        """Hand this connection to HTTP/2 (ALPN chose it, or a cleartext client sent
        the preface): it keeps our place in the counts and timers."""
        assert self.transport is not None and self.shared.h2 is not None
        self.closed = True  # as an HTTP/1.1 connection
        self.shared.connections.discard(self)
        h2 = H2Connection(self.shared, self.loop, self.shared.h2, self.shared.h2_stall_timeout)
        self.transport.set_protocol(h2)
        h2.take_over(self.transport, self.conn_id, self.addr, data)

    def _on_request(self, request: Request, now: float) -> None:
        if self.closing:
            return
        if request.upgrade and is_websocket_upgrade(request):
            self._upgrade(request)
            return
        env = {"k": wire.REQUEST, "id": 0, "conn": self.conn_id, "method": request.method,
               "target": request.target, "version": request.version,
               "headers": request.headers, "body": request.body, "addr": self.addr}
        if self.shared.tls:
            env["scheme"] = "https"  # only then: every other request saves the bytes
        keep_alive = request.keep_alive and not request.upgrade
        ex = Exchange(env, request.method, request.version, keep_alive, self)
        ex.began = now
        if not keep_alive:
            self.closing = True  # nothing after this request will be read
        exchanges = self.exchanges
        exchanges.append(ex)
        if len(exchanges) >= self.shared.max_pipeline or self.closing:
            self._update_reading()
        if not self.shared.static and not request.target.startswith("/_cluster/"):
            self.shared.upstream.submit(ex)
            return
        plan = self.shared.static_or_submit(ex, request.method, request.target, request.headers)
        if plan is not None:
            self.loop.create_task(send_file(ex, plan, partial(self._my_turn, ex)))

    def _upgrade(self, request: Request) -> None:
        """Hand a WebSocket upgrade to the hub, which asks the connection's worker."""
        hub = self.shared.hub
        transport = self.transport
        assert transport is not None
        if hub is None:
            self._on_protocol_error(ProtocolError(400, "no WebSockets here"))
            return
        if self.exchanges:
            # Pipelined behind requests still being answered: the switch waits until
            # their responses are written, in order (see _advance); nothing more is
            # read meanwhile (the parser stopped at the upgrade).
            self.pending_upgrade = request
            return
        core = WebSocketCore(self.shared.ws_options)
        refusal = core.open_handshake(request)
        if refusal is not None:
            log.info("client %s:%s: WebSocket upgrade refused, %s; %d", self.addr[0],
                     self.addr[1], core.refusal, refusal)
            extra = [("sec-websocket-version", "13")] if refusal == 426 else []
            transport.write(http_core.error_response(refusal, self.shared.date, extra=extra))
            self._close()
            return
        fields = {"target": request.target, "headers": request.headers,
                  "subprotocols": core.offered, "addr": self.addr}
        if self.shared.tls:
            fields["scheme"] = "wss"
        if not hub.open(self.conn_id, core, transport, fields):
            transport.write(http_core.error_response(503, self.shared.date,
                                                     extra=[("retry-after", "1")]))
            self._close()
            return
        self.ws = hub.sessions[self.conn_id]
        self.core.release()  # frames from now on: no HTTP parser held
        self.shared.connections.discard(self)  # no HTTP timeouts from now on
        self.closing = False
        self._update_reading()

    def _on_protocol_error(self, error: ProtocolError) -> None:
        log.info("client %s:%s: %d %s", self.addr[0], self.addr[1], error.status, error.reason)
        counts = self.shared.errors_by_status
        counts[error.status] = counts.get(error.status, 0) + 1
        self.closing = True
        # Answer after the responses already owed, in order: a placeholder exchange.
        env: dict[str, Any] = {}
        ex = Exchange(env, "-", "1.1", False, self)
        ex.began = self.loop.time()
        self.exchanges.append(ex)
        self.deliver_error(ex, error.status, ERROR_HEADERS.get(error.status))

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        # A WebSocket's output is bounded by --ws-max-queue instead (the hub closes a
        # client that lets it fill with 1013): it keeps reading under write pressure.
        want_pause = self.ws is None and (
            self.writing_paused or len(self.exchanges) >= self.shared.max_pipeline
            or self.closing)
        if want_pause and not self.reading_paused:
            self.reading_paused = True
            transport.pause_reading()
        elif not want_pause and self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()

    # -- responses -----------------------------------------------------------
    def deliver(self, ex: Exchange, part: ResponsePart) -> None:
        if self.closed or ex.done:
            return
        if self.exchanges and self.exchanges[0] is ex:
            self._write_part(ex, part)
            if ex.done:
                self._advance()
        elif ex.parts is None:
            ex.parts = [part]
        else:
            ex.parts.append(part)

    def deliver_error(self, ex: Exchange, status: int,
                      headers: list[tuple[str, str]] | None = None) -> None:
        if ex.started:
            # Part of the response is already on the wire; the status cannot change.
            # Closing tells the client the body is incomplete.
            ex.must_close()
            self.deliver(ex, ABORT)
            return
        fields = http_core.TEXT_PLAIN + (encode_fields(headers)[0] if headers else b"")
        self.deliver(ex, ResponseHead(status, fields, self.shared.error_body(status), False))

    def _advance(self) -> None:
        """The head exchange finished: write the next ones that already have parts."""
        exchanges = self.exchanges
        while exchanges and exchanges[0].done:
            done = exchanges.popleft()
            if not done.keep_alive:
                self._close()
                return
            if not exchanges:
                break
            head = exchanges[0]
            if head.parts:
                parts, head.parts = head.parts, None
                for part in parts:
                    self._write_part(head, part)
        self.last_activity = self.loop.time()
        if not exchanges and self.pending_upgrade is not None and not self.closing:
            request, self.pending_upgrade = self.pending_upgrade, None
            self._upgrade(request)
            return
        if self.reading_paused or self.closing:
            self._update_reading()
        self._wake()

    def _write_part(self, ex: Exchange, part: ResponsePart) -> None:
        transport = self.transport
        assert transport is not None
        if isinstance(part, Abort):
            ex.must_close()
            self._done(ex)
            return
        body = part.body
        more = not is_final(part)
        if not ex.started:
            if isinstance(part, ResponseHead) and part.events is not None:
                self._become_event_stream(ex, part)
                return
            ex.start()
            head = check_head(self.shared, ex, part)
            if head is None:
                ex.must_close()
                self._write(http_core.error_response(502, self.shared.date, version=ex.version))
                self._done(ex)
                return
            out = http_core.frame_start(ex.version, ex.keep_alive, ex.framing, head[0],
                                        head[1], body, more, self.shared.date)
        else:
            out = http_core.frame_part(ex.framing, body, more)
        if out:
            self._write(out)
        if more and body and ex.worker is not None:
            # Credit flows at the client's pace: held while its connection is backed up.
            if self.writing_paused:
                self._owed.append((ex, len(body)))
            else:
                self.shared.upstream.stream_credit(ex, len(body))
        if not more:
            self._done(ex)

    def _become_event_stream(self, ex: Exchange, part: ResponseHead) -> None:
        """The worker answered with `events`: this response becomes a stream of
        Server-Sent Events, held by the hub like a WebSocket (sse_core.py). Requests
        pipelined behind it will never be answered: their clients are told so."""
        transport = self.transport
        hub = self.shared.hub
        assert transport is not None
        ex.start()
        spec = sse_core.read_spec(part.events)
        head = check_head(self.shared, ex, part)
        if spec is None or hub is None or head is None or head[0] != 200:
            log.error("request %d: worker sent an invalid event stream; 502", ex.id)
            ex.status = 502
            ex.must_close()
            self._write(http_core.error_response(502, self.shared.date, version=ex.version))
            self._done(ex)
            return
        # A stream of unknown length; for HEAD, the head alone, with the length of no body.
        more = not ex.head_only
        ex.frame(body_framing(ex.version, ex.method, 200, 0, more, None))
        started = http_core.frame_start(ex.version, ex.keep_alive, ex.framing, 200, head[1],
                                        b"", more, self.shared.date)
        if not more:
            self._write(started)
            self._done(ex)
            return
        join, numbered, retry = spec
        core = sse_core.EventStreamCore(ex.chunked, numbered[0] if numbered else None, retry)
        self._done(ex)
        self.exchanges.popleft()
        for later in self.exchanges:
            if later.worker is not None:
                self.shared.upstream.client_gone(later)
        self.exchanges.clear()
        self.ws = hub.open_event_stream(self.conn_id, core, transport, started, join,
                                        numbered)
        self.core.release()
        self.shared.connections.discard(self)  # the hub's keepalive and limits from now on
        self.closing = False
        self._update_reading()

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.shared.bytes_out += len(data)
        self.transport.write(data)

    def _done(self, ex: Exchange) -> None:
        ex.finish()
        self.shared.finished(ex, self.loop.time())

    # -- timers and shutdown ---------------------------------------------------
    def check_timeouts(self, now: float) -> None:
        shared, core = self.shared, self.core
        if self.closed:
            # Closed while the client had not read what we sent: the send timeout still
            # holds, or its unread bytes would wait in memory as long as it idles.
            if self.writing_paused and now - self.paused_since > shared.timeouts.send:
                self._cut_unread()
            return
        if self.writing_paused:
            if now - self.paused_since > shared.timeouts.send:
                self._cut_unread()
            return  # reading is paused meanwhile: the client's silence is ours
        if self.closing:
            return
        if core.awaiting_headers:
            if now - self.request_began > shared.header_timeout:
                self._time_out("headers", f"headers not complete within "
                               f"{shared.header_timeout:.0f}s (--header-timeout)")
        elif core.awaiting_body and not self.reading_paused:
            if self.body_of != core.begun:
                self.body_of, self.body_began = core.begun, now
            if now - self.last_activity > shared.timeouts.body:
                self._time_out("body", f"no body byte for {shared.timeouts.body:.0f}s "
                               "(--body-timeout)")
            elif now - self.body_began > shared.timeouts.body_total:
                self._time_out("body", f"body not whole within {shared.timeouts.body_total:.0f}s"
                               " (--body-total-timeout)")
        elif not self.exchanges and not core.mid_request and \
                now - self.last_activity > shared.keepalive_timeout:
            self._close()

    def _time_out(self, phase: str, reason: str) -> None:
        self.shared.timed_out_in(phase)
        self.core.close()
        self._on_protocol_error(ProtocolError(408, reason))

    def shutdown(self) -> None:
        """Stop taking requests; close once what is in flight is answered."""
        self.closing = True
        if self.exchanges:
            self.exchanges[-1].must_close()
            self._update_reading()
        else:
            self._close()

    def close_now(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()  # flushes first: a client that reads nothing is cut
        if not self.writing_paused:
            self.shared.connections.discard(self)

    def _cut_unread(self) -> None:
        """Close without flushing: what the client would not read is dropped."""
        if self.transport is not None and (not self.closed or self.writing_paused):
            self.closed = True
            self.writing_paused = False
            self.shared.cut_unread(self.addr, self.transport)
        self.shared.connections.discard(self)

