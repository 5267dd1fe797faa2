"""Every bad input gets its status, one log line, and costs nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.harness import Cluster, Proc, cluster
from tests.httpclient import Conn, get
from tests.malformed import MALFORMED, NOT_IMPLEMENTED

APP = "tests.apps.handlers:app"


@pytest.fixture(scope="module")
def strict() -> Iterator[tuple[Cluster, Proc]]:
    with cluster() as c:
        gw = c.gateway("--max-body", "1024", "--header-timeout", "1",
                       "--keepalive-timeout", "1")
        c.worker(APP)
        yield c, gw


def port(fx: tuple[Cluster, Proc]) -> int:
    return int(fx[1].ready["port"])


def answer(fx: tuple[Cluster, Proc], raw: bytes) -> tuple[int, bool]:
    """The status the gateway answers `raw` with, and whether it then closed."""
    conn = Conn(port(fx))
    conn.send(raw)
    resp = conn.read_response()
    return resp.status, conn.wait_closed(3)


def still_serving(fx: tuple[Cluster, Proc]) -> None:
    assert get(port(fx), "/").status == 200


def test_request_line_over_8k_is_414(strict: tuple[Cluster, Proc]) -> None:
    assert answer(strict, b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\n\r\n") == (414, True)
    still_serving(strict)


def test_default_request_line_limit_is_8k() -> None:
    with cluster() as c:
        gw = c.gateway()
        c.worker(APP)
        p = int(gw.ready["port"])
        ok = get(p, "/files/" + "a" * 8000)
        assert ok.status == 200
        conn = Conn(p)
        conn.send(b"GET /files/" + b"a" * 8200 + b" HTTP/1.1\r\n\r\n")
        assert conn.read_response().status == 414


def test_headers_over_16k_is_431(strict: tuple[Cluster, Proc]) -> None:
    raw = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 900)
                                           for i in range(20)) + b"\r\n"
    assert answer(strict, raw) == (431, True)


def test_over_100_header_fields_is_431(strict: tuple[Cluster, Proc]) -> None:
    # Host and 100 more is 101 fields; Host and 99 more is the limit exactly.
    raw = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i
                                                     for i in range(100)) + b"\r\n"
    assert answer(strict, raw) == (431, True)
    raw = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i
                                                     for i in range(99)) + b"\r\n"
    assert answer(strict, raw)[0] == 200


def test_content_length_over_max_body_is_413_without_reading_it(
        strict: tuple[Cluster, Proc]) -> None:
    # Only the headers are sent: the answer must not wait for the body.
    assert answer(strict, b"POST /post-only HTTP/1.1\r\nContent-Length: 1025\r\n\r\n") == \
        (413, True)
    assert answer(strict, b"POST /post-only HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n" +
                  b"x" * 1024)[0] == 200


def test_chunked_body_over_max_body_is_413(strict: tuple[Cluster, Proc]) -> None:
    chunk = b"200\r\n" + b"x" * 512 + b"\r\n"
    raw = b"POST /post-only HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + \
        chunk * 3
    assert answer(strict, raw) == (413, True)


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_is_400_and_close(strict: tuple[Cluster, Proc], raw: bytes) -> None:
    assert answer(strict, raw) == (400, True)
    still_serving(strict)


@pytest.mark.parametrize("raw", NOT_IMPLEMENTED.values(), ids=NOT_IMPLEMENTED.keys())
def test_not_implemented_is_501_and_close(strict: tuple[Cluster, Proc], raw: bytes) -> None:
    assert answer(strict, raw) == (501, True)
    still_serving(strict)


def test_an_unsupported_major_version_is_505(strict: tuple[Cluster, Proc]) -> None:
    assert answer(strict, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n") == (505, True)


def test_the_absolute_form_is_served_with_its_own_host(strict: tuple[Cluster, Proc]) -> None:
    conn = Conn(port(strict))
    conn.send(b"GET http://elsewhere.example/items/3?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    resp = conn.read_response()
    assert resp.status == 200 and json.loads(resp.body)["id"] == 3


def test_error_after_good_pipelined_request_keeps_order(strict: tuple[Cluster, Proc]) -> None:
    conn = Conn(port(strict))
    conn.send(b"GET /sleep/0.2 HTTP/1.1\r\nHost: x\r\n\r\nBROKEN\r\n\r\n")
    first, second = conn.read_responses(2)
    assert (first.status, second.status) == (200, 400)
    assert conn.wait_closed(3)


def test_slow_headers_get_408_and_close(strict: tuple[Cluster, Proc]) -> None:
    conn = Conn(port(strict))
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert conn.read_response().status == 408
    assert conn.wait_closed(3)
    assert "408" in strict[1].log()


def test_idle_keep_alive_is_closed(strict: tuple[Cluster, Proc]) -> None:
    conn = Conn(port(strict))
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.read_response().status == 200
    assert conn.wait_closed(3)  # keepalive-timeout is 1 s; the sweep runs twice a second


def test_silent_connection_is_closed(strict: tuple[Cluster, Proc]) -> None:
    conn = Conn(port(strict))
    assert conn.wait_closed(3)


def test_bad_inputs_leave_one_log_line_each(strict: tuple[Cluster, Proc]) -> None:
    before = strict[1].log().count("client 127.0.0.1")
    answer(strict, b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n")
    strict[1].wait_log("client 127.0.0.1")
    after = strict[1].log().count("client 127.0.0.1")
    assert after == before + 1
    assert "Traceback" not in strict[1].log()
