"""The HTTP/1.1 core, byte by byte: no sockets, no loop, no clock."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from cluster.gateway.body_budget import BodyBudget
from cluster.gateway.framing import Framing, body_framing
from cluster.gateway.http_core import (
    FRAMING_PER_CHUNK,
    FRAMING_SLACK,
    LAST_CHUNK,
    ContinueExpected,
    HttpCore,
    HttpLimits,
    ProtocolError,
    Request,
    encode_chunk,
    encode_head,
    error_response,
    frame_part,
    frame_start,
)
from tests.malformed import MALFORMED, NOT_IMPLEMENTED

LIMITS = HttpLimits(max_request_line=64, max_header_bytes=200, max_header_count=5,
                    max_body=100)


def feed(*chunks: bytes, limits: HttpLimits = LIMITS) -> list[object]:
    core = HttpCore(limits)
    events: list[object] = []
    for chunk in chunks:
        events += core.receive_data(chunk)
    return events


def requests(*chunks: bytes) -> list[Request]:
    events = feed(*chunks)
    assert all(isinstance(e, Request) for e in events), events
    return events  # type: ignore[return-value]


def error_of(*chunks: bytes, limits: HttpLimits = LIMITS) -> int:
    events = feed(*chunks, limits=limits)
    errors = [e for e in events if isinstance(e, ProtocolError)]
    assert len(errors) == 1, events
    return errors[0].status


def test_simple_get() -> None:
    [req] = requests(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Thing: Yes\r\n\r\n")
    assert (req.method, req.target, req.version) == ("GET", "/a?b=1", "1.1")
    assert req.headers == [("host", "x"), ("x-thing", "Yes")]
    assert req.body == b"" and req.keep_alive


def test_request_split_at_every_byte() -> None:
    raw = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    [req] = requests(*[raw[i:i + 1] for i in range(len(raw))])
    assert req.body == b"hello"


def test_pipelined_requests_in_order() -> None:
    reqs = requests(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [r.target for r in reqs] == ["/1", "/2", "/3"]


def test_chunked_body_with_extension_and_trailer() -> None:
    [req] = requests(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer-X: t\r\n\r\n")
    assert req.body == b"abcde"
    assert ("trailer-x", "t") not in req.headers


def test_http10_closes_unless_keep_alive() -> None:
    [req] = requests(b"GET / HTTP/1.0\r\n\r\n")
    assert req.version == "1.0" and not req.keep_alive
    [req] = requests(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert req.keep_alive


def test_connection_close() -> None:
    [req] = requests(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert not req.keep_alive


def test_expect_continue_before_body() -> None:
    core = HttpCore(LIMITS)
    events = core.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                               b"Content-Length: 2\r\n\r\n")
    assert events == [ContinueExpected()]
    [req] = core.receive_data(b"ok")
    assert isinstance(req, Request) and req.body == b"ok"


def test_expect_continue_ignored_for_http10() -> None:
    events = feed(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n")
    assert not any(isinstance(e, ContinueExpected) for e in events)


def test_awaiting_headers_tracks_a_started_request() -> None:
    core = HttpCore(LIMITS)
    assert not core.awaiting_headers
    core.receive_data(b"GET / HTTP/1.1\r\nHo")
    assert core.awaiting_headers
    core.receive_data(b"st: x\r\n\r\n")
    assert not core.awaiting_headers and not core.mid_request


def test_limits_exactly_at_the_bound_pass() -> None:
    target = b"/" + b"a" * (LIMITS.max_request_line - 1)
    [req] = requests(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert req.target.encode() == target
    body = b"b" * LIMITS.max_body
    [req] = requests(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + body)
    assert req.body == body


def test_request_line_over_limit_is_414() -> None:
    assert error_of(b"GET /" + b"a" * LIMITS.max_request_line + b" HTTP/1.1\r\n\r\n") == 414


def test_request_line_over_limit_detected_before_it_ends() -> None:
    # No CRLF ever arrives: the limit must trip on the partial line.
    assert error_of(b"GET /" + b"a" * 40, b"a" * 40) == 414


def test_header_block_over_limit_is_431() -> None:
    assert error_of(b"GET / HTTP/1.1\r\nX: " + b"v" * 250 + b"\r\n\r\n") == 431


def test_too_many_header_fields_is_431() -> None:
    fields = b"".join(b"H%d: v\r\n" % i for i in range(6))
    assert error_of(b"GET / HTTP/1.1\r\n" + fields + b"\r\n") == 431


def test_content_length_over_max_body_is_413_before_the_body() -> None:
    core = HttpCore(LIMITS)
    [err] = core.receive_data(b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n")
    assert err == ProtocolError(413, err.reason)  # type: ignore[union-attr]


def test_chunked_body_over_max_body_is_413() -> None:
    chunk = b"%x\r\n%s\r\n" % (60, b"c" * 60)
    assert error_of(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                    chunk, chunk) == 413


CHUNKED = b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_chunk_extensions_without_end_are_413_long_before_max_body() -> None:
    """CVE-2024-22019: extensions are skipped by llhttp and never reach max_body."""
    limits = HttpLimits(max_body=1024 * 1024)
    core = HttpCore(limits)
    assert core.receive_data(CHUNKED + b"1;a=") == []
    sent = 0
    events: list[object] = []
    while not events and sent < 20 * 1024 * 1024:
        events = core.receive_data(b"b" * 4096)
        sent += 4096
    assert [type(e) for e in events] == [ProtocolError]
    assert events[0].status == 413 and sent <= FRAMING_SLACK + 4096  # type: ignore[attr-defined]


def test_small_chunks_with_short_extensions_pass() -> None:
    raw = CHUNKED + b"".join(b"1;name=value\r\nx\r\n" for _ in range(90)) + b"0\r\n\r\n"
    assert len(raw) - len(CHUNKED) - 90 > FRAMING_PER_CHUNK  # more framing than body
    [req] = requests(*[raw[i:i + 7] for i in range(0, len(raw), 7)])
    assert req.body == b"x" * 90


def test_too_many_trailer_fields_is_431() -> None:
    trailers = b"".join(b"T%d: v\r\n" % i for i in range(6))
    assert error_of(CHUNKED + b"1\r\nx\r\n0\r\n" + trailers + b"\r\n") == 431


def test_unfinished_bodies_share_one_budget_and_give_it_back() -> None:
    budget = BodyBudget(150)
    head = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    first, second, third = (HttpCore(LIMITS, budget) for _ in range(3))
    assert first.receive_data(head + b"a" * 90) == [] and budget.held == 90
    (refused,) = second.receive_data(head + b"b" * 61)  # 151 would be held
    assert isinstance(refused, ProtocolError) and refused.status == 503
    assert budget.held == 90 and budget.refused == 1
    assert third.receive_data(head + b"c" * 60) == [] and budget.held == 150
    third.close()  # its client went away mid-body
    [req] = first.receive_data(b"a" * 10)  # whole: no longer an unfinished body
    assert len(req.body) == 100 and budget.held == 0  # type: ignore[attr-defined]


def test_awaiting_body_is_the_time_between_headers_and_last_byte() -> None:
    core = HttpCore(LIMITS)
    core.receive_data(b"POST /p HTTP/1.1\r\nHost: x\r\n")
    assert core.awaiting_headers and not core.awaiting_body
    core.receive_data(b"Content-Length: 3\r\n\r\nab")
    assert core.awaiting_body and not core.awaiting_headers
    core.receive_data(b"c")
    assert not core.awaiting_body and not core.mid_request


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_400(raw: bytes) -> None:
    assert error_of(raw) == 400


@pytest.mark.parametrize("raw", NOT_IMPLEMENTED.values(), ids=NOT_IMPLEMENTED.keys())
def test_what_is_not_implemented_is_501(raw: bytes) -> None:
    assert error_of(raw) == 501


def test_after_an_error_input_is_refused() -> None:
    core = HttpCore(LIMITS)
    assert isinstance(core.receive_data(b"BAD\r\n\r\n")[0], ProtocolError)
    assert core.receive_data(b"GET / HTTP/1.1\r\n\r\n") == []


def test_requests_before_an_error_are_kept() -> None:
    events = feed(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nBAD\r\n\r\n")
    assert isinstance(events[0], Request) and events[0].target == "/ok"
    assert isinstance(events[1], ProtocolError) and events[1].status == 400


def test_upgrade_stops_parsing() -> None:
    core = HttpCore(LIMITS)
    events = core.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                               b"Upgrade: x\r\n\r\n"
                               b"\x00\x01binary")
    assert isinstance(events[0], Request) and events[0].upgrade
    assert core.upgraded and core.receive_data(b"more") == []


# -- responses ---------------------------------------------------------------

DATE = b"Sat, 21 Nov 2026 12:00:00 GMT"


def test_encode_head_with_length() -> None:
    head = encode_head("1.1", 200, b"X-A: b\r\n", content_length=5, chunked=False,
                       keep_alive=True, date=DATE)
    assert head == (b"HTTP/1.1 200 OK\r\nserver: cluster\r\ndate: " + DATE +
                    b"\r\nX-A: b\r\ncontent-length: 5\r\n\r\n")


def test_encode_head_chunked_and_close() -> None:
    head = encode_head("1.1", 201, b"", content_length=None, chunked=True, keep_alive=False,
                       date=DATE)
    assert head.startswith(b"HTTP/1.1 201 Created\r\n")
    assert head.endswith(b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")


def test_encode_head_http10_keep_alive_is_explicit() -> None:
    head = encode_head("1.0", 200, b"", content_length=0, chunked=False, keep_alive=True,
                       date=DATE)
    assert head.startswith(b"HTTP/1.0 200 OK\r\n") and b"connection: keep-alive\r\n" in head


def test_encode_head_until_close_has_no_framing() -> None:
    head = encode_head("1.0", 200, b"a: b\r\n", content_length=None, chunked=False,
                       keep_alive=False, date=DATE)
    assert head.endswith(b"a: b\r\nconnection: close\r\n\r\n")
    assert b"content-length" not in head and b"transfer-encoding" not in head


def test_unknown_status_has_empty_phrase() -> None:
    assert encode_head("1.1", 599, b"", content_length=0, chunked=False, keep_alive=True,
                       date=DATE).startswith(b"HTTP/1.1 599 \r\n")


def test_chunks() -> None:
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"") == b""  # never the terminating chunk by accident
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_error_response_is_generic() -> None:
    phrase = HTTPStatus(413).phrase.encode()
    head, body = error_response(413, DATE).split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 413 " + phrase + b"\r\n")
    assert body == phrase + b"\n"
    assert b"content-length: %d" % len(body) in head and b"connection: close" in head


# -- response framing, byte for byte -------------------------------------------------------

DAY = b"Sun, 22 Nov 2026 09:00:00 GMT"
CT = b"content-type: text/plain\r\n"


def head(status: bytes, *lines: bytes, version: bytes = b"1.1") -> bytes:
    return b"HTTP/" + version + b" " + status + b"\r\nserver: cluster\r\ndate: " + DAY + \
        b"\r\n" + CT + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def start(status: int, body: bytes, more: bool, declared: int | None = None, *,
          version: str = "1.1", method: str = "GET", keep_alive: bool = True
          ) -> tuple[bytes, Framing]:
    """A response's first bytes, as a connection writes them: the framing decided
    (framing.py), then the head and first part framed by it."""
    framing = body_framing(version, method, status, len(body), more, declared)
    return frame_start(version, keep_alive, framing, status, CT, body, more, DAY), framing


def test_a_whole_response_gets_its_length() -> None:
    assert start(200, b"hello", False)[0] == head(b"200 OK", b"content-length: 5") + b"hello"


def test_a_stream_of_unknown_length_is_chunked_and_ends_with_the_last_chunk() -> None:
    out, r = start(200, b"ab", True)
    assert out == head(b"200 OK", b"transfer-encoding: chunked") + b"2\r\nab\r\n"
    assert r.chunked
    assert frame_part(r, b"c" * 17, True) == b"11\r\n" + b"c" * 17 + b"\r\n"
    assert frame_part(r, b"", True) == b""  # an empty chunk would end the body
    assert frame_part(r, b"z", False) == b"1\r\nz\r\n0\r\n\r\n"


def test_a_stream_that_declared_its_length_is_not_chunked() -> None:
    out, r = start(200, b"", True, 10)
    assert out == head(b"200 OK", b"content-length: 10")
    assert frame_part(r, b"0123456789", False) == b"0123456789" and not r.chunked


def test_an_http10_stream_ends_with_the_connection() -> None:
    out, r = start(200, b"ab", True, version="1.0")
    assert out == head(b"200 OK", b"connection: close", version=b"1.0") + b"ab"
    assert r.until_close and not r.chunked  # the connection is not kept
    assert frame_part(r, b"cd", False) == b"cd"


def test_an_http10_whole_response_keeps_alive_when_asked() -> None:
    assert start(200, b"x", False, version="1.0")[0] == \
        head(b"200 OK", b"content-length: 1", b"connection: keep-alive", version=b"1.0") + b"x"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_have_no_length_and_no_body(status: int) -> None:
    phrase = b"204 No Content" if status == 204 else b"304 Not Modified"
    out, r = start(status, b"ignored", False)
    assert out == head(phrase) and r.no_body


def test_head_gets_the_length_of_the_body_it_does_not_get() -> None:
    assert start(200, b"hello", False, method="HEAD")[0] == \
        head(b"200 OK", b"content-length: 5")
    out, stream = start(200, b"ab", True, method="HEAD")
    assert out == head(b"200 OK")
    assert frame_part(stream, b"more", False) == b""


def test_http2_frames_its_own_streams() -> None:
    """The same rules for HTTP/2 (version "2"), but never chunked or until close."""
    assert body_framing("2", "GET", 200, 5, False, None).content_length == 5
    assert body_framing("2", "GET", 200, 0, True, 10).content_length == 10
    stream = body_framing("2", "GET", 200, 2, True, None)
    assert stream.content_length is None and not stream.chunked and not stream.until_close
    assert body_framing("2", "GET", 304, 0, False, None).no_body
    assert body_framing("2", "HEAD", 200, 5, False, None).no_body


def test_a_closing_response_says_so() -> None:
    assert start(404, b"", False, keep_alive=False)[0] == \
        head(b"404 Not Found", b"content-length: 0", b"connection: close")
