"""RFC 9112 / RFC 9110 server requirements on framing, version and Host, byte by byte.

Each case is the exact bytes a client sends and what the gateway's HTTP core makes of
them: the status it refuses with (the connection then closes), or the request it
passes on. Cases llhttp decides are here too, so a change of parser cannot loosen
any of them unnoticed.
"""

from __future__ import annotations

import pytest

from cluster.gateway.http_core import HttpCore, HttpLimits, ProtocolError, Request
from cluster.gateway.http_rules import origin_form, transfer_codings

REFUSED = [
    # RFC 9112 §3.2: Host
    (b"GET / HTTP/1.1\r\n\r\n", 400),                                    # no Host in 1.1
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),              # two Hosts
    (b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400),              # two, even in 1.0
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),                       # invalid value
    (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),                    # userinfo
    (b"GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n", 400),                     # bad port
    (b"GET http://a/x HTTP/1.1\r\n\r\n", 400),                           # absolute, no Host
    # RFC 9112 §3.2.3, §3.2.4: target forms
    (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET a HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),             # not a proxy
    (b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),                    # not our scheme
    # Methods llhttp does not know: 400 (it cannot tell them from garbage)
    (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),                         # case-sensitive
    # RFC 9110 §15.6.6: versions
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET /\r\n\r\n", 505),                                             # HTTP/0.9
    (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 400),                         # llhttp: invalid
    # RFC 9112 §6.1, §6.3: Transfer-Encoding and Content-Length
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    # RFC 9112 §5: field syntax
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),                        # space before :
    (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),                        # before 1st field
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),           # obs-fold
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),              # bare CR
    (b"GET / HTTP/1.1\nHost: a\n\n", 400),                               # bare LF
    (b"GET / HTTP/1.1\r\nHost: a\r\nbogus\r\n\r\n", 400),                # no colon
    (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),                      # space in target
]


@pytest.mark.parametrize("data,status", REFUSED)
def test_refused_with_the_status_the_rfcs_name(data: bytes, status: int) -> None:
    events = HttpCore(HttpLimits()).receive_data(data)
    assert [type(e) for e in events] == [ProtocolError], events
    assert events[0].status == status  # type: ignore[union-attr]


def parse(data: bytes) -> Request:
    events = HttpCore(HttpLimits()).receive_data(data)
    assert len(events) == 1 and isinstance(events[0], Request), events
    return events[0]


def test_an_http10_request_may_leave_host_out() -> None:
    assert parse(b"GET / HTTP/1.0\r\n\r\n").target == "/"


def test_an_empty_host_is_valid() -> None:
    assert parse(b"GET / HTTP/1.1\r\nHost: \r\n\r\n").headers == [("host", "")]


@pytest.mark.parametrize("host", [b"a", b"a.example:8080", b"[::1]:80", b"127.0.0.1",
                                  b"xn--bcher-kva.example"])
def test_valid_hosts(host: bytes) -> None:
    parse(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")


def test_the_absolute_form_names_the_host_and_becomes_origin_form() -> None:
    # RFC 9112 §3.2.2: the target's authority wins over the Host header.
    req = parse(b"GET http://b.example:81/p/q?x=1 HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n")
    assert req.target == "/p/q?x=1"
    assert req.headers == [("host", "b.example:81"), ("x", "y")]
    assert parse(b"GET HTTPS://b HTTP/1.1\r\nHost: a\r\n\r\n").target == "/"


def test_options_asterisk_and_leading_empty_lines() -> None:
    assert parse(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").target == "*"
    assert parse(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").method == "GET"  # §2.2


def test_chunked_alone_is_accepted_with_extensions() -> None:
    req = parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
                b"1;ext=1\r\nx\r\n0\r\n\r\n")
    assert req.body == b"x"


def test_after_a_refusal_nothing_more_is_read() -> None:
    core = HttpCore(HttpLimits())
    assert isinstance(core.receive_data(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")[0],
                      ProtocolError)
    assert core.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") == []


def test_helpers() -> None:
    assert transfer_codings("gzip ;q=1, Chunked") == ["gzip", "chunked"]
    assert transfer_codings(" , ") == []
    assert origin_form("/a") is None and origin_form("*") is None
    assert origin_form("http://u:p@h:1?q") == ("/?q", "h:1")
    assert origin_form("ftp://h/") is None
