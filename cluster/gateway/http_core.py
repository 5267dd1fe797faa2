"""HTTP/1.1 server protocol core, sans-I/O: bytes in, events out; responses to bytes.

Theory of operation
-------------------
`HttpCore.receive_data(data)` feeds llhttp (through httptools) and returns the events
that data completed: `Request` for every whole request (pipelined ones in order),
`ContinueExpected` when a client waits for ``100 Continue`` before sending a body, and
at most one `ProtocolError` carrying the status to answer with. After an error the
core refuses all further input; the connection answers and closes.

llhttp already rejects much of what RFC 9112 says a server must (Content-Length with
Transfer-Encoding, differing Content-Lengths, obs-fold, NUL or bare CR in a field,
bad chunk sizes); `http_rules` judges the rest (Host, versions, target forms,
transfer codings) once a header block is complete. This core adds the size limits,
which llhttp does not keep, and counts them while bytes stream in, so nothing over a
limit is ever buffered:

- a body over `max_body` is 413; so are chunk extensions past `FRAMING_SLACK` bytes
  plus `FRAMING_PER_CHUNK` a chunk (llhttp skips extensions without a callback, so
  a client could send them for ever and never reach `max_body`: CVE-2024-22019);
- trailer fields count against the header block's bytes and field count (431);
- body bytes held while a request is unfinished are taken from the gateway's
  `BodyBudget`, and a request that finds no room is 503.

Nothing here reads a clock or touches a socket; timeouts live in the asyncio layer,
which asks `awaiting_headers` and `awaiting_body` where a request stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

import httptools

from cluster.errors import ClusterError
from cluster.gateway.body_budget import UNLIMITED, BodyBudget
from cluster.gateway.framing import Framing
from cluster.gateway.http_rules import VALID_HOSTS, origin_form, refusal, transfer_codings
from cluster.plumbing.http_fields import encode_fields


@dataclass(frozen=True)
class HttpLimits:
    max_request_line: int = 8 * 1024
    max_header_bytes: int = 16 * 1024
    max_header_count: int = 100
    max_body: int = 1024 * 1024


# Chunked framing: a chunk's size line and CRLFs cost a few bytes each; what is more
# than this (extensions, padding) counts against a slack that ends in 413.
FRAMING_PER_CHUNK = 64
FRAMING_SLACK = 16 * 1024


@dataclass(slots=True)
class Request:
    method: str
    target: str
    version: str  # "1.1" or "1.0"
    headers: list[tuple[str, str]]  # names lower-cased, as received, in order
    body: bytes = b""
    keep_alive: bool = True
    upgrade: bool = False  # an Upgrade request the core cannot continue past


@dataclass(frozen=True, slots=True)
class ContinueExpected:
    """The client sent `Expect: 100-continue` and waits before sending its body."""


@dataclass(frozen=True, slots=True)
class ProtocolError:
    status: int
    reason: str  # for the log only; the client gets the status's phrase


Event = Request | ContinueExpected | ProtocolError


class _LimitExceeded(ClusterError):
    """Raised inside a parser callback to stop llhttp at once."""


class _Partial:
    """The request being parsed (a plain class: a dataclass with default factories
    cost a microsecond per request to build)."""

    __slots__ = ("body", "body_bytes", "chunks", "codings", "expect_continue", "framing",
                 "header_bytes", "headers", "headers_done", "hosts", "request", "trailers",
                 "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.headers_done = False
        self.expect_continue = False
        self.hosts: list[str] | None = None  # every Host value (RFC 9112 §3.2: one)
        self.codings: list[str] | None = None  # every transfer coding, in order
        self.request: Request | None = None
        self.chunks = 0  # chunk headers parsed
        self.framing = 0  # bytes of a chunked body that were not body
        self.trailers = 0  # trailer fields


class HttpCore:
    def __init__(self, limits: HttpLimits, budget: BodyBudget | None = None) -> None:
        self.limits = limits
        self.budget = budget if budget is not None else BodyBudget(UNLIMITED)
        # None once the connection became a WebSocket (release): nothing is fed then.
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._events: list[Event] = []
        self._partial: _Partial | None = None
        self.failed = False
        self.upgraded = False
        self.begun = 0  # requests begun: tells the timers one request from the next

    @property
    def awaiting_headers(self) -> bool:
        """A request has begun and its header block is not complete yet."""
        return self._partial is not None and not self._partial.headers_done

    @property
    def awaiting_body(self) -> bool:
        """A request's header block is complete and its body is not."""
        return self._partial is not None and self._partial.headers_done

    @property
    def mid_request(self) -> bool:
        return self._partial is not None

    def receive_data(self, data: bytes) -> list[Event]:
        if self.failed or self.upgraded:
            return []
        # Bytes of a chunked body that were not body: counted over feeds that begin and
        # end inside one body (a feed crossing a request's edge is one read at most).
        # Most feeds start a request (no partial one): they pay one comparison.
        partial = self._partial
        if partial is not None and (partial.codings is None or not partial.headers_done):
            partial = None
        before = partial.body_bytes if partial is not None else 0
        parser = self._parser
        assert parser is not None, "fed after release"
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request is complete; what follows belongs to another protocol.
            self.upgraded = True
        except _LimitExceeded:
            pass  # the callback recorded the ProtocolError
        except httptools.HttpParserError as exc:
            if not self.failed:
                cause = exc.__context__
                if isinstance(cause, _LimitExceeded):
                    pass
                else:
                    self._fail(400, f"malformed request: {exc}")
        if partial is not None and partial is self._partial:
            partial.framing += len(data) - (partial.body_bytes - before)
            if partial.framing > FRAMING_SLACK + FRAMING_PER_CHUNK * partial.chunks:
                self._fail(413, f"{partial.framing} bytes of chunk framing and extensions "
                           f"for {partial.chunks} chunks")
        events, self._events = self._events, []
        return events

    def release(self) -> None:
        """The connection became a WebSocket: nothing more to parse, and the parser
        (about 1 KiB) would be a good part of what the idle connection keeps."""
        self._parser = None

    def close(self) -> None:
        """The connection is gone: give back what its unfinished body held."""
        if self._partial is not None:
            self.budget.give(self._partial.body_bytes)
            self._partial = None
        self.failed = True

    def _fail(self, status: int, reason: str) -> None:
        self.failed = True
        if self._partial is not None:
            self.budget.give(self._partial.body_bytes)
        self._partial = None
        self._events.append(ProtocolError(status, reason))

    def _limit(self, status: int, reason: str) -> None:
        self._fail(status, reason)
        raise _LimitExceeded(reason)

    # -- httptools callbacks -------------------------------------------------
    def on_message_begin(self) -> None:
        self._partial = _Partial()
        self.begun += 1

    def on_url(self, url: bytes) -> None:
        partial = self._partial
        assert partial is not None  # llhttp calls on_message_begin first
        partial.url += url
        if len(partial.url) > self.limits.max_request_line:
            self._limit(414, f"request target over {self.limits.max_request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        partial = self._partial
        assert partial is not None
        partial.header_bytes += len(name) + len(value)
        if partial.header_bytes > self.limits.max_header_bytes:
            self._limit(431, f"header block over {self.limits.max_header_bytes} bytes")
        if partial.headers_done:
            # A trailer field: counted against the limits, not kept.
            partial.trailers += 1
            if partial.trailers > self.limits.max_header_count:
                self._limit(431, f"more than {self.limits.max_header_count} trailer fields")
            return
        lname = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        partial.headers.append((lname, text))
        if len(partial.headers) > self.limits.max_header_count:
            self._limit(431, f"more than {self.limits.max_header_count} header fields")
        if lname == "content-length":
            # llhttp has validated the digits; only the size is ours to judge.
            if int(text) > self.limits.max_body:
                self._limit(413, f"Content-Length {text} over {self.limits.max_body}")
        elif lname == "host":
            if partial.hosts is None:
                partial.hosts = [text]
            else:
                partial.hosts.append(text)
        elif lname == "transfer-encoding":
            partial.codings = (partial.codings or []) + transfer_codings(text)
        elif lname == "expect" and text.lower() == "100-continue":
            partial.expect_continue = True

    def on_headers_complete(self) -> None:
        partial = self._partial
        assert partial is not None
        partial.headers_done = True
        parser = self._parser
        assert parser is not None  # it is calling us
        version = parser.get_http_version()
        method = parser.get_method().decode("ascii")
        target = partial.url.decode("latin-1")
        hosts = partial.hosts
        # Nearly every request: HTTP/1.1, one Host seen valid before, origin form, no
        # transfer coding. Only the others pay for the full judgement.
        if not (version == "1.1" and hosts is not None and len(hosts) == 1 and
                hosts[0] in VALID_HOSTS and partial.codings is None and target[:1] == "/"):
            refused = refusal(method, target, version, hosts or [], partial.codings or [])
            if refused is not None:
                self._limit(*refused)
        if target[:1] != "/":
            absolute = origin_form(target)
            if absolute is not None:
                # RFC 9112 §3.2.2: the target's authority, not the Host header, names
                # the host; handlers and apps then see one consistent request.
                target, authority = absolute
                partial.headers = [(n, authority if n == "host" else v)
                                   for n, v in partial.headers]
        request = Request(
            method=method,
            target=target,
            version=version,
            headers=partial.headers,
            keep_alive=parser.should_keep_alive(),
            upgrade=parser.should_upgrade(),
        )
        partial.request = request
        if partial.expect_continue and version == "1.1":
            self._events.append(ContinueExpected())

    def on_body(self, body: bytes) -> None:
        partial = self._partial
        assert partial is not None
        if partial.body_bytes + len(body) > self.limits.max_body:
            self._limit(413, f"body over {self.limits.max_body} bytes")
        if not self.budget.take(len(body)):
            self._limit(503, f"no room for another body: the gateway holds "
                        f"{self.budget.held} bytes of unfinished ones (--max-body-buffer)")
        partial.body_bytes += len(body)
        partial.body.append(body)

    def on_chunk_header(self) -> None:
        partial = self._partial
        assert partial is not None
        partial.chunks += 1

    def on_message_complete(self) -> None:
        partial = self._partial
        assert partial is not None and partial.request is not None
        request = partial.request
        request.body = b"".join(partial.body) if partial.body else b""
        self.budget.give(partial.body_bytes)  # whole: the dispatcher's to bound now
        self._partial = None
        self._events.append(request)


# -- responses ---------------------------------------------------------------

_STATUS_LINES: dict[int, bytes] = {}


def status_line(version: str, status: int) -> bytes:
    key = status if version == "1.1" else -status
    line = _STATUS_LINES.get(key)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        line = f"HTTP/{version} {status} {phrase}\r\n".encode("latin-1")
        _STATUS_LINES[key] = line
    return line


CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"


def encode_head(version: str, status: int, fields: bytes, *, content_length: int | None,
                chunked: bool, keep_alive: bool, date: bytes) -> bytes:
    """Status line and header block around `fields` (a block of `encode_fields`' shape,
    checked already). `content_length=None, chunked=False` means the body runs until
    the connection closes (HTTP/1.0 streaming)."""
    if content_length is not None:
        framing = b"content-length: %d\r\n" % content_length
    elif chunked:
        framing = b"transfer-encoding: chunked\r\n"
    else:
        framing = b""
    if not keep_alive:
        framing += b"connection: close\r\n"
    elif version == "1.0":
        framing += b"connection: keep-alive\r\n"
    return b"%bserver: cluster\r\ndate: %b\r\n%b%b\r\n" % (
        status_line(version, status), date, fields, framing)


def frame_start(version: str, keep_alive: bool, framing: Framing, status: int,
                fields: bytes, body: bytes, more: bool, date: bytes) -> bytes:
    """The head and the first part of the body, framed as `framing` (framing.py)
    says. No side effects: the exchange keeps the framing for the parts that follow."""
    out = encode_head(version, status, fields, content_length=framing.content_length,
                      chunked=framing.chunked,
                      keep_alive=keep_alive and not framing.until_close, date=date)
    if body and not framing.no_body:
        out += encode_chunk(body) if framing.chunked else body
    if not more and framing.chunked and not framing.no_body:
        out += LAST_CHUNK
    return out


def frame_part(framing: Framing, body: bytes, more: bool) -> bytes:
    """A later part of the body, framed as the first was."""
    out = b""
    if body and not framing.no_body:
        out = encode_chunk(body) if framing.chunked else body
    if not more and framing.chunked and not framing.no_body:
        out += LAST_CHUNK
    return out


def encode_chunk(data: bytes) -> bytes:
    if not data:
        return b""  # an empty chunk would end the body
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


TEXT_PLAIN = b"content-type: text/plain; charset=utf-8\r\n"


def status_body(status: int) -> bytes:
    """The generic body of a response the gateway makes itself: never any detail."""
    try:
        return HTTPStatus(status).phrase.encode() + b"\n"
    except ValueError:
        return b"error\n"


def error_response(status: int, date: bytes, *, version: str = "1.1",
                   extra: list[tuple[str, str]] | None = None,
                   keep_alive: bool = False, head_only: bool = False,
                   body: bytes | None = None) -> bytes:
    """A complete small response the gateway writes by itself (4xx, 5xx)."""
    if body is None:
        body = status_body(status)
    fields = TEXT_PLAIN + (encode_fields(extra)[0] if extra else b"")
    head = encode_head(version, status, fields, content_length=len(body), chunked=False,
                       keep_alive=keep_alive, date=date)
    return head if head_only else head + body
