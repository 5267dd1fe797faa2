"""HTTP/2 server protocol core, sans-I/O: bytes in, events out; responses to bytes.

Theory of operation
-------------------
h2 (python-hyper's sans-I/O HTTP/2) does the framing, HPACK, stream states and the
flow-control arithmetic. This core puts the gateway's rules around it:

- **Requests.** A stream's header block and body become one `StreamRequest`, with the
  same fields an HTTP/1.1 request has (`:authority` as Host, split cookie fields
  joined). Bodies are gathered up to `max_body`; past it, or when the declared
  content-length is over it, the stream is answered 413 at once. What the client
  still sends is read and dropped (flow control stays open, nothing is kept) up to
  `DISCARD_LIMIT`, then the stream is reset with NO_ERROR (RFC 9113 §8.1): a client
  that is reset in the middle of its upload may lose the answer (curl prints 000
  on a busy machine). The connection goes on either way.
- **Flow control, inbound.** Received body bytes are acknowledged (the client's
  window reopened) only while the connection holds less than `max_buffered` bytes of
  bodies not yet handed on; beyond that the acknowledgements wait for `release`, so
  a client can make us hold at most that plus one window. Those bytes are also taken
  from the gateway's `BodyBudget` (503 when it has no room), and a body that goes
  without a byte, or takes too long in all, is found by `expire_bodies` (408).
- **Flow control, outbound.** Response bodies wait in the stream until its window and
  the connection's allow them; `Sent` events say how much left, which is when the
  worker gets its stream credit back. A stream that waits for a window longer than
  the stall timeout is found by `stalled` and reset.
- **Abuse.** Streams the client resets (rapid reset, CVE-2023-44487), and frames that
  cost work but carry no request (SETTINGS, PING, PRIORITY, empty DATA) are counted
  per `ABUSE_WINDOW` seconds; past their budget the connection gets GOAWAY
  ENHANCE_YOUR_CALM. A stream opened while `max_streams` of this connection's
  requests are still at workers (reset ones included: their work is not undone by
  the reset) is refused with REFUSED_STREAM. CONTINUATION floods (CVE-2024-27316)
  end in h2 itself: more than 64 frames in one header block is a connection error;
  a header list over `max_header_bytes` (our SETTINGS_MAX_HEADER_LIST_SIZE) too.

Nothing here reads a clock or touches a socket: callers pass `now`.
"""

from __future__ import annotations

import contextlib
import re
from collections import deque
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.exceptions import StreamClosedError
from h2.settings import SettingCodes, Settings

from cluster.gateway.body_budget import UNLIMITED, BodyBudget
from cluster.gateway.http_rules import valid_host

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ABUSE_WINDOW = 10.0  # seconds over which resets and control frames are counted
DISCARD_LIMIT = 16 * 1024 * 1024  # body bytes dropped after a 413 before the stream's reset

# Hop-by-hop fields have no place in HTTP/2 (RFC 9113 §8.2.2): dropped from responses.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                         b"transfer-encoding", b"upgrade", b"te"})


# What HTTP/1.1's parser refuses with 400, refused here too: control characters in the
# target (space included) and in field values (HTAB excepted). h2 lets them through.
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class H2Limits:
    max_streams: int = 100
    max_header_bytes: int = 16 * 1024
    max_header_count: int = 100
    max_body: int = 1024 * 1024
    header_table_size: int = 4096
    max_buffered: int = 4 * 1024 * 1024  # request bodies held per connection
    max_resets: int = 200  # client resets per ABUSE_WINDOW
    max_control: int = 500  # SETTINGS, PING, PRIORITY, empty DATA per ABUSE_WINDOW


# -- events ----------------------------------------------------------------------------

@dataclass(slots=True)
class StreamRequest:
    """A whole request on a stream: headers and body."""
    stream_id: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    scheme: str


@dataclass(frozen=True, slots=True)
class StreamRefused:
    """A request refused before it went anywhere; the core has answered it."""
    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class StreamCancelled:
    """The client reset a stream (or it was reset here): its request is not wanted."""
    stream_id: int


@dataclass(frozen=True, slots=True)
class Sent:
    """This many bytes of a stream's response body went into the connection."""
    stream_id: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class StreamFinished:
    """The stream's response is wholly sent."""
    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionEnded:
    """GOAWAY went out (or came in): send what is queued, then close."""
    reason: str
    abusive: bool = False


Event = StreamRequest | StreamRefused | StreamCancelled | Sent | StreamFinished | \
    ConnectionEnded


@dataclass(slots=True)
class _Inbound:
    headers: list[tuple[str, str]]
    method: str
    target: str
    scheme: str
    began: float  # when its headers came
    last_data: float  # when its body last grew
    body: bytearray = field(default_factory=bytearray)
    refused: bool = False
    discarded: int = 0  # body bytes read and dropped after the refusal


@dataclass(slots=True)
class _Outbound:
    chunks: deque[bytes] = field(default_factory=deque)
    ending: bool = False  # the last part arrived: end the stream once chunks are out
    ended: bool = False  # END_STREAM sent
    waiting_since: float = 0.0  # when it last had data and no window; 0: not waiting


class _Budget:
    """Events per ABUSE_WINDOW, counted in fixed windows (cheap, and an abuser is
    over any reasonable budget by far)."""

    __slots__ = ("count", "limit", "started")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.started = 0.0

    def spend(self, now: float) -> bool:
        """Count one; False once over the budget."""
        if now - self.started > ABUSE_WINDOW:
            self.started, self.count = now, 0
        self.count += 1
        return self.count <= self.limit


class H2Core:
    def __init__(self, limits: H2Limits, *, tls: bool, budget: BodyBudget | None = None) -> None:
        self.limits = limits
        self.budget = budget if budget is not None else BodyBudget(UNLIMITED)
        self.default_scheme = "https" if tls else "http"
        # Inbound headers are validated by h2, as they come from anyone. Outbound ones
        # are made here from blocks a worker checked (`well_formed`: no CR, LF or NUL,
        # no framing fields) with names lowered: checking them again cost a fifth of
        # the gateway's time per request.
        config = H2Configuration(client_side=False, header_encoding=None,
                                 validate_inbound_headers=True,
                                 normalize_inbound_headers=True,
                                 validate_outbound_headers=False,
                                 normalize_outbound_headers=False)
        self.conn = H2Connection(config)
        # As the initial values, so our first SETTINGS frame carries them (an update
        # would be sent as the old values and applied only once acknowledged).
        self.conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            SettingCodes.HEADER_TABLE_SIZE: limits.header_table_size,
            SettingCodes.ENABLE_PUSH: 0,
        })
        self.conn.initiate_connection()
        # Enforced from the first byte, not once the client acknowledges our SETTINGS.
        self.conn.decoder.max_header_list_size = limits.max_header_bytes
        self.conn.decoder.max_allowed_table_size = limits.header_table_size
        self.inbound: dict[int, _Inbound] = {}
        self.outbound: dict[int, _Outbound] = {}
        self.at_workers = 0  # requests handed on and not finished (reset ones too)
        self.buffered = 0  # request body bytes held here or not yet handed on
        self.held_acks: list[tuple[int, int]] = []  # (stream, bytes) not acknowledged
        self.resets = _Budget(limits.max_resets)
        self.control = _Budget(limits.max_control)
        self.ended = False  # GOAWAY sent or received: nothing more is read
        self.draining = False  # shutting down: new streams are refused

    # -- input ---------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> list[Event]:
        if self.ended:
            return []
        try:
            received = self.conn.receive_data(data)
        except H2ProtocolError as exc:
            # h2 has queued GOAWAY with the error's code already.
            self.ended = True
            calm = getattr(exc, "error_code", None) == ErrorCodes.ENHANCE_YOUR_CALM
            return [ConnectionEnded(f"protocol error: {exc}", abusive=calm)]
        out: list[Event] = []
        for event in received:
            if isinstance(event, RequestReceived):
                self._on_headers(event, now, out)
            elif isinstance(event, DataReceived):
                self._on_data(event, now, out)
            elif isinstance(event, StreamEnded):
                self._on_end(event.stream_id, out)
            elif isinstance(event, WindowUpdated):
                self._flush_all(now, out)
            elif isinstance(event, StreamReset):
                self._on_reset(event.stream_id, event.remote_reset, now, out)
            elif isinstance(event, (PingReceived, RemoteSettingsChanged, PriorityUpdated)):
                if not self.control.spend(now):
                    self._calm(f"more than {self.limits.max_control} SETTINGS, PING or "
                               f"PRIORITY frames in {ABUSE_WINDOW:.0f}s", out)
                if isinstance(event, RemoteSettingsChanged):
                    self._flush_all(now, out)  # the initial window may have grown
            elif isinstance(event, ConnectionTerminated):
                self.ended = True
                out.append(ConnectionEnded("the client sent GOAWAY"))
            # TrailersReceived and the rest: request trailers are not carried (docs/http2.md)
            if self.ended:
                break
        return out

    def _on_headers(self, event: RequestReceived, now: float, out: list[Event]) -> None:
        sid = event.stream_id
        if self.at_workers >= self.limits.max_streams or self.draining:
            # Its earlier streams' work is still running (reset ones too), or we are
            # going away: REFUSED_STREAM tells the client it may retry it elsewhere.
            # Streams refused count with those reset: a client opening and resetting
            # streams faster than workers finish spends the same budget either way.
            with contextlib.suppress(StreamClosedError):  # reset by the client already
                self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            if not self.draining and not self.resets.spend(now):
                self._calm(f"more than {self.limits.max_resets} streams reset or refused "
                           f"in {ABUSE_WINDOW:.0f}s (rapid reset)", out)
            return
        pseudo: dict[bytes, bytes] = {}
        headers: list[tuple[str, str]] = []
        cookies: list[str] = []
        for name, value in event.headers or ():
            if name[:1] == b":":
                pseudo[name] = value
            elif name == b"cookie":
                cookies.append(value.decode("latin-1"))
            else:
                headers.append((name.decode("latin-1"), value.decode("latin-1")))
        method = pseudo.get(b":method", b"").decode("latin-1")
        authority = pseudo.get(b":authority", b"").decode("latin-1")
        target = pseudo.get(b":path", b"").decode("latin-1")
        scheme = pseudo.get(b":scheme", b"").decode("latin-1") or self.default_scheme
        if cookies:  # RFC 9113 §8.2.3: one field again for HTTP/1.1 semantics
            headers.append(("cookie", "; ".join(cookies)))
        if authority and not any(n == "host" for n, _ in headers):
            headers.insert(0, ("host", authority))
        stream = _Inbound(headers, method, target, scheme, now, now)
        self.inbound[sid] = stream
        refusal = self._refusal(method, target, scheme, headers)
        if refusal is not None:
            self._refuse(sid, stream, refusal[0], refusal[1], out)
        if event.stream_ended:
            self._on_end(sid, out)

    def _refusal(self, method: str, target: str, scheme: str,
                 headers: list[tuple[str, str]]) -> tuple[int, str] | None:
        if len(headers) > self.limits.max_header_count:
            return 431, f"more than {self.limits.max_header_count} header fields"
        if method == "CONNECT":
            return 501, "CONNECT: this is not a proxy"
        if scheme not in ("http", "https"):
            return 400, f"scheme {scheme!r}"
        if not (target.startswith("/") or (target == "*" and method == "OPTIONS")):
            return 400, "a :path that is not origin form"
        if _BAD_TARGET.search(target):
            return 400, "a control character in :path"
        hosts: list[str] = []
        for name, value in headers:
            if _BAD_VALUE.search(value):
                return 400, f"a control character in {name}"
            if name == "host":
                hosts.append(value)
            elif name == "content-length" and int(value) > self.limits.max_body:
                # Refused at the header, as HTTP/1.1 does, before any of the body comes
                # (h2 has ended the connection for a value that is not digits).
                return 413, f"content-length {value} over {self.limits.max_body}"
        if len(hosts) > 1 or (hosts and not valid_host(hosts[0])):
            return 400, "an invalid or repeated Host"
        return None

    def _refuse(self, sid: int, stream: _Inbound, status: int, reason: str,
                out: list[Event]) -> None:
        stream.refused = True
        self._release_stream(stream)
        out.append(StreamRefused(sid, status, reason))

    def _on_data(self, event: DataReceived, now: float, out: list[Event]) -> None:
        sid = event.stream_id
        size = event.flow_controlled_length
        stream = self.inbound.get(sid)
        if not event.data and not event.stream_ended and not self.control.spend(now):
            self._calm(f"more than {self.limits.max_control} empty frames in "
                       f"{ABUSE_WINDOW:.0f}s", out)
            return
        if stream is None or stream.refused:
            self._ack(sid, size)  # discarded: the window must not shrink for it
            if stream is not None:
                # Answered already (413): the client may still be sending, and some
                # clients drop an answer whose stream is reset under their upload. Read
                # and drop the rest up to a bound, then reset.
                stream.discarded += size
                if stream.discarded > DISCARD_LIMIT:
                    self.reset(sid, ErrorCodes.NO_ERROR)
            return
        if len(stream.body) + len(event.data) > self.limits.max_body:
            self._ack(sid, size)
            self._refuse(sid, stream, 413, f"a body over {self.limits.max_body} bytes", out)
            return
        if not self.budget.take(len(event.data)):
            self._ack(sid, size)
            self._refuse(sid, stream, 503, f"no room for another body: the gateway holds "
                         f"{self.budget.held} bytes of unfinished ones (--max-body-buffer)",
                         out)
            return
        stream.last_data = now
        stream.body += event.data
        self.buffered += size
        if self.buffered <= self.limits.max_buffered:
            self._ack(sid, size)
        else:
            self.held_acks.append((sid, size))

    def _on_end(self, sid: int, out: list[Event]) -> None:
        stream = self.inbound.pop(sid, None)
        if stream is None or stream.refused:
            return
        self.at_workers += 1
        out.append(StreamRequest(sid, stream.method, stream.target, stream.headers,
                                 bytes(stream.body), stream.scheme))
        self._release_stream(stream)  # whole: the dispatcher's to bound now

    def _on_reset(self, sid: int, remote: bool, now: float, out: list[Event]) -> None:
        stream = self.inbound.pop(sid, None)
        if stream is not None:
            self._release_stream(stream)
        self.outbound.pop(sid, None)
        out.append(StreamCancelled(sid))
        if remote and not self.resets.spend(now):
            self._calm(f"more than {self.limits.max_resets} streams reset or refused in "
                       f"{ABUSE_WINDOW:.0f}s (rapid reset)", out)

    def _release_stream(self, stream: _Inbound) -> None:
        self.budget.give(len(stream.body))
        self.release(len(stream.body))
        stream.body = bytearray()

    def close(self) -> None:
        """The connection is gone: give back what unfinished bodies held."""
        for stream in self.inbound.values():
            self.budget.give(len(stream.body))
            stream.body = bytearray()
        self.inbound.clear()

    def expire_bodies(self, now: float, idle: float, total: float) -> list[Event]:
        """Streams whose body went `idle` seconds without a byte, or is not whole
        `total` seconds after its headers: refused with 408 (the caller answers and
        resets them), or, already answered, reset."""
        out: list[Event] = []
        for sid, stream in list(self.inbound.items()):
            if now - stream.last_data <= idle and now - stream.began <= total:
                continue
            if stream.refused:
                self.reset(sid)
            else:
                waited = now - stream.last_data
                self._refuse(sid, stream, 408,
                             f"no body byte for {waited:.0f}s" if waited > idle else
                             f"body not whole within {total:.0f}s", out)
        return out

    def _calm(self, reason: str, out: list[Event]) -> None:
        self.ended = True
        self.conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        out.append(ConnectionEnded(reason, abusive=True))

    def _ack(self, sid: int, size: int) -> None:
        if size:
            try:
                self.conn.acknowledge_received_data(size, sid)
            except StreamClosedError:
                self.conn.increment_flow_control_window(size)  # the connection's share

    def release(self, nbytes: int) -> None:
        """Body bytes no longer held here: acknowledge what waited for room."""
        self.buffered = max(0, self.buffered - nbytes)
        while self.held_acks and self.buffered <= self.limits.max_buffered:
            sid, size = self.held_acks.pop(0)
            self._ack(sid, size)

    # -- output ---------------------------------------------------------------------
    def respond(self, sid: int, status: int, fields: bytes, date: bytes, *,
                content_length: int | None, end: bool) -> None:
        """The response head: `fields` is a header block of `encode_fields`' shape."""
        headers = [(b":status", b"%d" % status), (b"server", b"cluster"), (b"date", date)]
        for line in fields.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                lower = name.lower()
                if lower not in _HOP_BY_HOP:
                    headers.append((lower, value.strip()))
        if content_length is not None:
            headers.append((b"content-length", b"%d" % content_length))
        try:
            self.conn.send_headers(sid, headers, end_stream=end)
        except H2ProtocolError:  # the stream closed meanwhile (a reset crossed it)
            return
        if not end:
            self.outbound[sid] = _Outbound()

    def send_body(self, sid: int, data: bytes, end: bool, now: float,
                  flush: bool = True) -> list[Event]:
        """Queue a part of the body; sends what the windows allow (nothing, with
        `flush` False: the socket is backed up; `flush()` later)."""
        stream = self.outbound.get(sid)
        if stream is None:
            return []
        if data:
            stream.chunks.append(data)
        stream.ending = end
        out: list[Event] = []
        if flush:
            self._flush(sid, stream, now, out)
        return out

    def flush(self, now: float) -> list[Event]:
        """Send what every stream holds, as far as the windows allow."""
        out: list[Event] = []
        self._flush_all(now, out)
        return out

    def holds(self, sid: int) -> bool:
        """Whether part of the stream's body is still waiting here."""
        stream = self.outbound.get(sid)
        return stream is not None and bool(stream.chunks)

    def held_bytes(self, sid: int) -> int:
        """How much of the stream's body waits here for a window."""
        stream = self.outbound.get(sid)
        return sum(len(c) for c in stream.chunks) if stream is not None else 0

    def sending(self, sid: int) -> bool:
        """Whether the stream's response is still being sent."""
        return sid in self.outbound

    def _flush_all(self, now: float, out: list[Event]) -> None:
        for sid, stream in list(self.outbound.items()):
            self._flush(sid, stream, now, out)

    def _flush(self, sid: int, stream: _Outbound, now: float, out: list[Event]) -> None:
        conn = self.conn
        sent = 0
        try:
            while stream.chunks:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = stream.chunks[0]
                if len(chunk) <= window:
                    stream.chunks.popleft()
                    # The last part ends the stream in its own DATA frame.
                    last = stream.ending and not stream.chunks
                    conn.send_data(sid, chunk, end_stream=last)
                    sent += len(chunk)
                    if last:
                        stream.ending = False
                        stream.ended = True
                else:
                    conn.send_data(sid, chunk[:window])
                    stream.chunks[0] = chunk[window:]
                    sent += window
            if not stream.chunks and stream.ending:
                conn.end_stream(sid)
                stream.ending = False
                stream.ended = True
        except StreamClosedError:
            self.outbound.pop(sid, None)
            return
        if sent:
            out.append(Sent(sid, sent))
        if not stream.chunks:
            stream.waiting_since = 0.0
            if stream.ended:
                del self.outbound[sid]
                out.append(StreamFinished(sid))
        elif sent or not stream.waiting_since:
            stream.waiting_since = now  # progress, or the start of a wait

    def finish_request(self) -> None:
        """A request handed on is over at its worker (answered, failed or gone)."""
        self.at_workers = max(0, self.at_workers - 1)

    def reset(self, sid: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        self.outbound.pop(sid, None)
        stream = self.inbound.pop(sid, None)
        if stream is not None:
            self._release_stream(stream)
        with contextlib.suppress(StreamClosedError, H2ProtocolError):
            self.conn.reset_stream(sid, code)

    def stalled(self, now: float, timeout: float) -> list[int]:
        """Streams whose response has waited for a window longer than `timeout`."""
        return [sid for sid, s in self.outbound.items()
                if s.waiting_since and now - s.waiting_since > timeout]

    def goaway(self) -> None:
        """No new streams; once those under way are done, GOAWAY. (h2 sends nothing on
        a connection after its GOAWAY, so the first step is ours: new streams are
        refused with REFUSED_STREAM, which a client may retry elsewhere.)"""
        self.draining = True
        if self.idle and not self.ended:
            self.ended = True
            self.conn.close_connection(ErrorCodes.NO_ERROR,
                                       last_stream_id=self.conn.highest_inbound_stream_id)

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    @property
    def idle(self) -> bool:
        return not self.inbound and not self.outbound and not self.at_workers
