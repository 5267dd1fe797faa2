"""The asyncio side of one HTTP/2 client connection: bytes to the sans-I/O `H2Core`,
its requests to the dispatcher as the same envelopes HTTP/1.1 makes (version "2"),
the workers' answers back into the core.

A connection becomes HTTP/2 in `HttpConnection`: by ALPN after a TLS handshake, or
when a cleartext connection starts with the HTTP/2 preface (prior knowledge); it then
hands its transport over to this protocol (`take_over`).

Each stream's exchange has its own `StreamSink`, so a stream the client resets is
closed for the dispatcher (a request still waiting for a worker is never sent; one
already sent is cancelled with GONE) while its connection goes on. Response bodies
are flow-controlled twice over: the worker's stream credit comes back only as bytes
leave for the client (`Sent`), and nothing is moved into the connection while the
socket is backed up.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from h2.errors import ErrorCodes

from cluster.gateway import http_core, sse_core
from cluster.gateway.client_context import (
    ERROR_HEADERS,
    ConnectionContext,
    check_head,
    send_file,
)
from cluster.gateway.exchange import Exchange
from cluster.gateway.h2_core import (
    ConnectionEnded,
    Event,
    H2Core,
    H2Limits,
    Sent,
    StreamCancelled,
    StreamFinished,
    StreamRefused,
    StreamRequest,
)
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

log = logging.getLogger("cluster.gateway.h2")


class StreamSink:
    """Where one stream's response goes (a ResponseSink for its exchange)."""

    __slots__ = ("closed", "conn", "events", "ex", "final", "sid", "worker_done")
    ex: Exchange  # set once the exchange that names this sink exists

    def __init__(self, conn: H2Connection, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.closed = False  # reset, or its connection gone: nothing more to send
        self.final = False  # the last part has been handled
        self.worker_done = False  # counted off the connection's requests at workers
        self.events: Session | None = None  # its response became an event stream

    def deliver(self, ex: Exchange, part: ResponsePart) -> None:
        self.conn.deliver(self, part)

    def deliver_error(self, ex: Exchange, status: int,
                      headers: list[tuple[str, str]] | None = None) -> None:
        self.conn.deliver_error(self, status, headers)


class EventOutput:
    """One stream whose response is Server-Sent Events, as the hub writes to it: the
    hub's Transport. Closing it ends the stream (END_STREAM), not the connection."""

    __slots__ = ("conn", "ended", "sink")

    def __init__(self, conn: H2Connection, sink: StreamSink) -> None:
        self.conn = conn
        self.sink = sink
        self.ended = False

    def write(self, data: bytes) -> None:
        self.conn.stream_data(self.sink, data, False)

    def get_write_buffer_size(self) -> int:
        transport = self.conn.transport
        return self.conn.core.held_bytes(self.sink.sid) + (
            transport.get_write_buffer_size() if transport is not None else 0)

    def close(self) -> None:
        if not self.ended:
            self.ended = True
            self.conn.stream_data(self.sink, b"", True)

    def is_closing(self) -> bool:
        return self.ended or self.sink.closed or self.conn.closed

    def pause_reading(self) -> None:
        pass  # a stream of events reads nothing

    def resume_reading(self) -> None:
        pass


class H2Connection(asyncio.Protocol):
    def __init__(self, shared: ConnectionContext, loop: asyncio.AbstractEventLoop,
                 limits: H2Limits, stall_timeout: float) -> None:
        self.shared = shared
        self.loop = loop
        self.core = H2Core(limits, tls=shared.tls, budget=shared.budget)
        self.stall_timeout = stall_timeout
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, StreamSink] = {}
        self.conn_id = 0
        self.addr: list[Any] = ["", 0]
        self.closed = False
        self.writing_paused = False
        self.paused_since = 0.0
        self.last_progress = 0.0
        self._drained: asyncio.Event | None = None  # for file senders waiting on windows
        # Stream credit for bytes h2 has framed but the socket has not taken yet: given
        # to the worker once they are written, and held while the client reads nothing
        # (given at once, a busy loop pass could frame a whole body into memory).
        self._owed: list[tuple[Exchange, int]] = []
        self._write_scheduled = False

    def take_over(self, transport: asyncio.Transport, conn_id: int, addr: list[Any],
                  data: bytes) -> None:
        """Become the protocol of a connection HttpConnection accepted and counted."""
        self.transport = transport
        self.conn_id = conn_id
        self.addr = addr
        self.last_progress = self.loop.time()
        self.shared.connections.add(self)
        self.shared.h2_connections += 1
        self._write_out()  # our SETTINGS
        if data:
            self.data_received(data)

    # -- asyncio callbacks -------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        self.shared.bytes_in += len(data)
        events = self.core.receive_data(data, now)
        if events:
            self.last_progress = now
            self._handle(events, now)
        self._write_out()

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.open -= 1
        self.closed = True
        self.core.close()  # what unfinished bodies held goes back to the budget
        self.shared.connections.discard(self)
        for sink in self.streams.values():
            self._cancel(sink)
        self.streams.clear()
        self._wake()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.paused_since = self.loop.time()
        if self.transport is not None:
            self.transport.pause_reading()  # nor make us answer more PINGs and SETTINGS

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        now = self.loop.time()
        self._handle(self.core.flush(now), now)
        self._write_out()
        self._wake()

    # -- events from the core ------------------------------------------------------------
    def _handle(self, events: list[Event], now: float) -> None:
        for event in events:
            if isinstance(event, StreamRequest):
                self._on_request(event, now)
            elif isinstance(event, Sent):
                self._on_sent(event)
            elif isinstance(event, StreamFinished):
                sink = self.streams.get(event.stream_id)
                if sink is not None and sink.final:
                    del self.streams[sink.sid]
            elif isinstance(event, StreamCancelled):
                sink = self.streams.pop(event.stream_id, None)
                if sink is not None:
                    self._cancel(sink)
            elif isinstance(event, StreamRefused):
                self._on_refused(event)
            elif isinstance(event, ConnectionEnded):
                self._on_ended(event)
        self._close_if_drained()

    def _on_request(self, req: StreamRequest, now: float) -> None:
        conn = self.conn_id
        if any(name == "accept" and "text/event-stream" in value
               for name, value in req.headers):
            # It may become an event stream, which needs a number of its own (the
            # connection's is shared by its streams) for push to find it.
            self.shared.next_conn += 1
            conn = self.shared.next_conn
        env = {"k": wire.REQUEST, "id": 0, "conn": conn, "method": req.method,
               "target": req.target, "version": "2", "headers": req.headers,
               "body": req.body, "addr": self.addr}
        if req.scheme == "https":
            env["scheme"] = "https"
        sink = StreamSink(self, req.stream_id)
        ex = sink.ex = Exchange(env, req.method, "2", True, sink)
        ex.began = now
        self.streams[req.stream_id] = sink
        plan = self.shared.static_or_submit(ex, req.method, req.target, req.headers)
        if plan is not None:
            self.loop.create_task(send_file(ex, plan, partial(self._my_turn, sink)))

    def _on_sent(self, event: Sent) -> None:
        sink = self.streams.get(event.stream_id)
        if sink is not None and not sink.final and sink.ex.worker is not None:
            self._owed.append((sink.ex, event.nbytes))
            self._write_soon()

    def _on_refused(self, event: StreamRefused) -> None:
        log.info("client %s:%s stream %d: %d %s", self.addr[0], self.addr[1],
                 event.stream_id, event.status, event.reason)
        counts = self.shared.errors_by_status
        counts[event.status] = counts.get(event.status, 0) + 1
        sink = self.streams.pop(event.stream_id, None)
        if sink is not None:  # a body over the limit, after the request was made
            self._cancel(sink)
        extra = encode_fields(ERROR_HEADERS[event.status])[0] \
            if event.status in ERROR_HEADERS else b""
        self._respond_whole(event.stream_id, event.status, http_core.TEXT_PLAIN + extra,
                            self.shared.error_body(event.status))
        if event.status in (408, 503):
            # Refused mid-body: the client must stop sending it (no error: RFC 9113 §8.1).
            # A 413's client may finish sending what it declared: the core drops it.
            self.core.reset(event.stream_id, ErrorCodes.NO_ERROR)

    def _on_ended(self, event: ConnectionEnded) -> None:
        if event.abusive:
            self.shared.h2_abusive += 1
            log.warning("client %s:%s: %s; GOAWAY", self.addr[0], self.addr[1], event.reason)
        else:
            log.info("client %s:%s: HTTP/2 connection ends: %s", self.addr[0], self.addr[1],
                     event.reason)
        self._write_out()
        self.close_now()

    def _cancel(self, sink: StreamSink) -> None:
        """The client no longer wants this stream's answer."""
        sink.closed = True
        if sink.events is not None and self.shared.hub is not None:
            self.shared.hub.connection_lost(sink.events)
        ex = sink.ex
        if ex.worker is None:
            # Never sent (a static file, or still waiting for credit: the dispatcher
            # skips closed sinks), so no worker answer will count it off.
            self._worker_done(sink)
        elif not sink.final:
            self.shared.upstream.client_gone(ex)

    def _worker_done(self, sink: StreamSink) -> None:
        if not sink.worker_done:
            sink.worker_done = True
            self.core.finish_request()

    # -- responses -------------------------------------------------------------------
    def deliver(self, sink: StreamSink, part: ResponsePart) -> None:
        ex = sink.ex
        more = not is_final(part)
        if not more:
            self._worker_done(sink)
        if sink.closed or sink.final or self.closed:
            self._close_if_drained()
            return
        now = self.loop.time()
        sid = sink.sid
        if isinstance(part, Abort):
            self._finish(sink, now)
            self.core.reset(sid, ErrorCodes.INTERNAL_ERROR)
            self._write_soon()
            self._close_if_drained()
            return
        body = part.body
        if not ex.started and isinstance(part, ResponseHead) and part.events is not None:
            self._become_event_stream(sink, part, now)
        elif not ex.started:
            ex.start()
            head = check_head(self.shared, ex, part)
            if head is None:
                self._respond_whole(sid, 502, http_core.TEXT_PLAIN, http_core.status_body(502))
                self._finish(sink, now)
            else:
                status, fields = head
                end = ex.head_only or (not more and not body)
                self.core.respond(sid, status, fields, self.shared.date,
                                  content_length=ex.framing.content_length, end=end)
                if end:
                    self._finish(sink, now)
                else:
                    self._body(sink, body, more, now)
        elif not ex.head_only:
            self._body(sink, body, more, now)
        elif not more:
            self._finish(sink, now)
        self._write_soon()
        self._close_if_drained()

    def _become_event_stream(self, sink: StreamSink, part: ResponseHead, now: float
                             ) -> None:
        """The worker answered with `events`: the stream stays open as a stream of
        Server-Sent Events, held by the hub like a WebSocket (sse_core.py)."""
        ex = sink.ex
        ex.start()
        spec = sse_core.read_spec(part.events)
        head = check_head(self.shared, ex, part)
        hub = self.shared.hub
        if spec is None or hub is None or head is None or head[0] != 200:
            log.error("request %d: worker sent an invalid event stream; 502", ex.id)
            ex.status = 502
            self._respond_whole(sink.sid, 502, http_core.TEXT_PLAIN, http_core.status_body(502))
            self._finish(sink, now)
            return
        if ex.head_only:
            self.core.respond(sink.sid, 200, head[1], self.shared.date, content_length=None,
                              end=True)
            self._finish(sink, now)
            return
        self.core.respond(sink.sid, 200, head[1], self.shared.date, content_length=None,
                          end=False)
        sink.final = True  # nothing more from a worker: its parts and credit are done
        self.shared.finished(ex, now)
        join, numbered, retry = spec
        core = sse_core.EventStreamCore(False, numbered[0] if numbered else None, retry)
        sink.events = hub.open_event_stream(ex.envelope["conn"], core, EventOutput(self, sink),
                                            b"", join, numbered)

    def stream_data(self, sink: StreamSink, data: bytes, end: bool) -> None:
        """Part of an event stream's body, from the hub."""
        if sink.closed or self.closed:
            return
        now = self.loop.time()
        self._handle(self.core.send_body(sink.sid, data, end, now,
                                         flush=not self.writing_paused), now)
        self._write_soon()

    def _body(self, sink: StreamSink, body: bytes, more: bool, now: float) -> None:
        if not more:
            self._finish(sink, now)
        # While the socket is backed up the part waits in the core (resume_writing).
        self._handle(self.core.send_body(sink.sid, body, not more, now,
                                         flush=not self.writing_paused), now)

    def _finish(self, sink: StreamSink, now: float) -> None:
        sink.final = True
        sink.ex.finish()
        if not self.core.sending(sink.sid):
            self.streams.pop(sink.sid, None)
        self.shared.finished(sink.ex, now)

    def deliver_error(self, sink: StreamSink, status: int,
                      headers: list[tuple[str, str]] | None = None) -> None:
        if sink.ex.started:
            self.deliver(sink, ABORT)
            return
        fields = http_core.TEXT_PLAIN + (encode_fields(headers)[0] if headers else b"")
        self.deliver(sink, ResponseHead(status, fields, self.shared.error_body(status), False))

    def _respond_whole(self, sid: int, status: int, fields: bytes, body: bytes) -> None:
        self.core.respond(sid, status, fields, self.shared.date, content_length=len(body),
                          end=False)
        self.core.send_body(sid, body, True, self.loop.time())
        self._write_out()

    async def _my_turn(self, sink: StreamSink) -> bool:
        """A file sender's wait: until the stream's last chunk has left for the client
        and the socket is not backed up. False once the stream or connection is gone."""
        while not (self.closed or sink.closed) and (
                self.writing_paused or self.core.holds(sink.sid)):
            if self._drained is None:
                self._drained = asyncio.Event()
            self._drained.clear()
            await self._drained.wait()
        return not (self.closed or sink.closed)

    def _wake(self) -> None:
        if self._drained is not None:
            self._drained.set()

    def _write_soon(self) -> None:
        """Responses arrive from workers in batches: one write per connection per pass
        of the loop, not one per response (the write is most of a small one's cost)."""
        if not self._write_scheduled:
            self._write_scheduled = True
            self.loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._write_scheduled = False
        data = self.core.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.shared.bytes_out += len(data)
            self.transport.write(data)
        if self._owed and not self.writing_paused and not self.closed:
            owed, self._owed = self._owed, []
            upstream = self.shared.upstream
            for ex, nbytes in owed:
                upstream.stream_credit(ex, nbytes)
        if self._drained is not None and not self.writing_paused:
            self._wake()

    # -- timers and shutdown ---------------------------------------------------------------
    def check_timeouts(self, now: float) -> None:
        timeouts = self.shared.timeouts
        if self.closed:
            # Closed while the client had not read what we sent: the send timeout still
            # holds, or its unread bytes would wait in memory as long as it idles.
            if self.writing_paused and now - self.paused_since > timeouts.send:
                self._cut_unread()
            return
        if self.writing_paused and now - self.paused_since > timeouts.send:
            self._cut_unread()
            return
        expired = self.core.expire_bodies(now, timeouts.body, timeouts.body_total)
        if expired:
            for _ in expired:
                self.shared.timed_out_in("body")
            self._handle(expired, now)
        stalled = self.core.stalled(now, self.stall_timeout)
        for sid in stalled:
            log.info("client %s:%s stream %d: no window for %.0fs; reset", self.addr[0],
                     self.addr[1], sid, self.stall_timeout)
            self.shared.h2_stalls += 1
            sink = self.streams.pop(sid, None)
            if sink is not None:
                self._cancel(sink)
            self.core.reset(sid)
        if self.core.idle and now - self.last_progress > self.shared.keepalive_timeout:
            self.core.goaway()
            self._close_if_drained()
        elif stalled or expired:
            self._write_out()

    def shutdown(self) -> None:
        """No new streams (they are refused, so a client retries them elsewhere);
        close once those under way are answered."""
        self.core.goaway()
        self._write_out()
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self.core.draining and self.core.idle and not self.closed:
            self.core.goaway()  # idle now: the GOAWAY itself
            self._write_out()
            self.close_now()

    def close_now(self) -> None:
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
