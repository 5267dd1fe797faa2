"""HTTP/1.1 through the whole cluster: real gateway, real workers, real sockets."""

from __future__ import annotations

import json
import time

from tests.harness import Cluster, Proc
from tests.httpclient import Conn, get

Fixture = tuple[Cluster, Proc]


def port(fx: Fixture) -> int:
    return int(fx[1].ready["port"])


def test_plain_function_gets_the_seed_request_dict(echo_cluster: Fixture) -> None:
    resp = get(port(echo_cluster), "/a/b?x=1&y=2", headers={"X-Test": "yes"})
    assert resp.status == 200 and resp.header("content-type") == "application/json"
    data = json.loads(resp.body)
    assert data["method"] == "GET" and data["target"] == "/a/b?x=1&y=2"
    assert data["path"] == "/a/b" and data["query"] == {"x": "1", "y": "2"}
    assert data["version"] == "HTTP/1.1" and data["headers"]["x-test"] == "yes"
    assert data["addr"][0] == "127.0.0.1" and data["id"].startswith("gw-")
    assert resp.header("x-worker") == data["worker"]
    assert resp.header("server") == "cluster" and resp.header("date")


def test_function_state_persists_in_the_worker(echo_cluster: Fixture) -> None:
    first = json.loads(get(port(echo_cluster)).body)["calls"]
    second = json.loads(get(port(echo_cluster)).body)["calls"]
    assert second > first


def test_keep_alive_serves_many_requests_on_one_connection(app_cluster: Fixture) -> None:
    conn = Conn(port(app_cluster))
    for i in range(20):
        conn.send(b"GET /items/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        resp = conn.read_response()
        assert json.loads(resp.body)["id"] == i
    conn.close()


def test_pipelined_responses_come_back_in_request_order(app_cluster: Fixture) -> None:
    # The first request is the slowest: responses complete out of order in the
    # workers, and must still be written in request order.
    conn = Conn(port(app_cluster))
    conn.send(b"GET /sleep/0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /items/2 HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /sleep/0.1 HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /items/4 HTTP/1.1\r\nHost: x\r\n\r\n")
    bodies = [json.loads(r.body) for r in conn.read_responses(4)]
    assert [b.get("slept", b.get("id")) for b in bodies] == [0.3, 2, 0.1, 4]
    conn.close()


def test_chunked_request_body(app_cluster: Fixture) -> None:
    conn = Conn(port(app_cluster))
    conn.send(b"PUT /items/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert json.loads(conn.read_response().body)["body"] == "hello world"
    conn.close()


def test_http10_closes_after_the_response(app_cluster: Fixture) -> None:
    conn = Conn(port(app_cluster))
    conn.send(b"GET /items/1 HTTP/1.0\r\n\r\n")
    resp = conn.read_response()
    assert resp.status == 200 and resp.version == "1.0"
    assert resp.header("content-length") == str(len(resp.body))
    assert conn.wait_closed(5)


def test_http10_keep_alive(app_cluster: Fixture) -> None:
    conn = Conn(port(app_cluster))
    for _ in range(2):
        conn.send(b"GET /items/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = conn.read_response()
        assert resp.header("connection") == "keep-alive"
    conn.close()


def test_head_has_headers_and_no_body(app_cluster: Fixture) -> None:
    conn = Conn(port(app_cluster))
    conn.send(b"HEAD /json HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = conn.read_raw_until(b"[1,2,3]")
    head_resp, get_resp = raw.split(b"HTTP/1.1 200", 2)[1:]
    length = int(get_resp.split(b"content-length: ")[1].split(b"\r\n")[0])
    assert b"content-length: %d\r\n" % length in head_resp
    assert head_resp.endswith(b"\r\n\r\n")  # nothing after the HEAD response's headers
    conn.close()


def test_expect_100_continue(app_cluster: Fixture) -> None:
    conn = Conn(port(app_cluster))
    conn.send(b"PUT /items/3 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
              b"Content-Length: 4\r\n\r\n")
    assert conn.read_raw_until(b"\r\n\r\n").startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    conn.raw = b""
    conn.send(b"body")
    assert json.loads(conn.read_response().body)["body"] == "body"
    conn.close()


def test_streamed_response_is_chunked(app_cluster: Fixture) -> None:
    conn = Conn(port(app_cluster))
    conn.send(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    resp = conn.read_response()
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.body == b"part 0\npart 1\npart 2\n"
    conn.send(b"GET /astream HTTP/1.1\r\nHost: x\r\n\r\n")  # same connection still usable
    assert conn.read_response().body == b"apart 0\napart 1\napart 2\n"
    conn.close()


def test_streamed_response_http10_is_close_delimited(app_cluster: Fixture) -> None:
    conn = Conn(port(app_cluster))
    conn.send(b"GET /stream HTTP/1.0\r\n\r\n")
    raw = conn.read_raw_until(b"part 2\n")
    assert b"transfer-encoding" not in raw and b"content-length" not in raw.split(b"\r\n\r\n")[0]
    assert conn.wait_closed(5)


def test_stream_that_fails_midway_cuts_the_connection(app_cluster: Fixture) -> None:
    conn = Conn(port(app_cluster))
    conn.send(b"GET /stream-fails HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.wait_closed(5)
    assert b"first\n" in conn.raw and not conn.raw.endswith(b"0\r\n\r\n")


def test_app_routes(app_cluster: Fixture) -> None:
    p = port(app_cluster)
    assert get(p, "/").body == b"index\n"
    assert json.loads(get(p, "/items/7").body)["id"] == 7
    assert get(p, "/files/a/b/c.txt").body == b"a/b/c.txt"
    missing = get(p, "/items/notanint")
    assert missing.status == 404 and json.loads(missing.body) == {"missing": "/items/notanint"}
    wrong = get(p, "/post-only")
    assert wrong.status == 405 and wrong.header("allow") == "POST"
    assert get(p, "/post-only", method="POST").body == b"posted"


def test_body_types(app_cluster: Fixture) -> None:
    p = port(app_cluster)
    resp = get(p, "/bytes")
    assert resp.body == b"\x00\x01\x02"
    assert resp.header("content-type") == "application/octet-stream"
    assert get(p, "/json").body == b"[1,2,3]"
    nothing = get(p, "/nothing")
    assert nothing.status == 204 and nothing.header("content-length") is None


def test_large_response(app_cluster: Fixture) -> None:
    resp = get(port(app_cluster), "/big/3000000")
    assert len(resp.body) == 3_000_000


def test_handler_exception_is_a_generic_500_and_the_worker_survives(
        app_cluster: Fixture) -> None:
    c, _gw = app_cluster
    resp = get(port(app_cluster), "/boom")
    assert resp.status == 500
    assert resp.body.startswith(b"Internal Server Error (request gw-")
    assert b"secret" not in resp.body
    request_id = resp.body.decode().split("request ")[1].rstrip(")\n")
    workers = [p for p in c.procs if p.role == "worker"]
    assert any(request_id in w.log() and "secret detail" in w.log() for w in workers)
    assert get(port(app_cluster), "/items/1").status == 200


def test_invalid_responses_are_500_or_502(app_cluster: Fixture) -> None:
    assert get(port(app_cluster), "/bad-status").status == 500
    resp = get(port(app_cluster), "/split-header")
    # The worker checks headers where the response is made: a handler bug is a 500.
    assert resp.status == 500 and resp.header("set-cookie") is None


def test_sync_handlers_do_not_block_the_worker(app_cluster: Fixture) -> None:
    # Each worker has 4 threads; 2 blocked handlers leave room for fast requests.
    p = port(app_cluster)
    slow = [Conn(p) for _ in range(2)]
    for conn in slow:
        conn.send(b"GET /sleep/1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
    start = time.monotonic()
    for i in range(5):
        assert get(p, f"/items/{i}").status == 200
    assert time.monotonic() - start < 1.2
    for conn in slow:
        assert conn.read_response().status == 200
        conn.close()


def test_async_function_handler() -> None:
    from tests.harness import cluster
    with cluster() as c:
        gw = c.gateway()
        c.worker("tests.apps.handlers:async_echo")
        resp = get(int(gw.ready["port"]), "/x")
        assert json.loads(resp.body) == {"path": "/x", "async": True}
