"""Clients that try to hold the gateway hostage, or to write into its log, on real
sockets: stalled and dripping bodies, a budget of unfinished bodies, chunk extensions
without end, clients that read nothing, static paths the file system refuses, and
control characters meant for a terminal or a log reader."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Cluster, Proc, cluster, wait_for
from tests.httpclient import Conn, get
from tests.integration.test_observability import metrics_port, sample, scrape
from tests.wsclient import frame, handshake

APP = "tests.apps.handlers:app"
WS_APP = "tests.apps.ws_app:app"
POST_10 = b"POST /post-only HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"


def timeouts(gw: Proc, phase: str) -> float:
    return sample(scrape(metrics_port(gw.ready)), "cluster_gateway_client_timeouts_total",
                  phase=phase)


@pytest.fixture(scope="module")
def guarded() -> Iterator[tuple[Cluster, Proc]]:
    with cluster() as c:
        gw = c.gateway("--max-connections", "20", "--body-timeout", "1",
                       "--body-total-timeout", "3", "--max-body", "100000",
                       "--max-body-buffer", "150000")
        c.worker(APP)
        yield c, gw


def test_stalled_bodies_are_408_and_free_their_places(guarded: tuple[Cluster, Proc]) -> None:
    """20 sockets that send a head with Content-Length: 10 and then nothing used to
    keep every new client refused for as long as they liked."""
    _, gw = guarded
    port = int(gw.ready["port"])
    before = timeouts(gw, "body")
    stalled = [Conn(port) for _ in range(20)]
    for conn in stalled:
        conn.send(POST_10 + b"12345")  # half the body, then nothing
    wait_for(lambda: get(port, "/").status == 503, 10, "the gateway to be full")
    for conn in stalled:
        resp = conn.read_response()
        assert resp.status == 408 and conn.wait_closed(5)
    wait_for(lambda: get(port, "/").status == 200, 10, "a place for a new client")
    assert timeouts(gw, "body") == before + 20
    assert "408 no body byte for 1s (--body-timeout)" in gw.log()


def test_a_body_dripped_a_byte_at_a_time_is_408_at_the_total_timeout(
        guarded: tuple[Cluster, Proc]) -> None:
    _, gw = guarded
    conn = Conn(int(gw.ready["port"]))
    conn.send(b"POST /post-only HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    stop = threading.Event()

    def drip() -> None:
        # A byte every 0.3 s: under --body-timeout (1 s) each time, what is tested is
        # that the whole body still has only --body-total-timeout (3 s).
        while not stop.wait(0.3):
            try:
                conn.send(b"x")
            except OSError:
                return
    dripper = threading.Thread(target=drip)
    began = time.monotonic()
    dripper.start()
    try:
        assert conn.read_response().status == 408
        assert time.monotonic() - began >= 3
    finally:
        stop.set()
        dripper.join(5)
    assert "body not whole within 3s (--body-total-timeout)" in gw.log()


def test_unfinished_bodies_share_a_budget(guarded: tuple[Cluster, Proc]) -> None:
    _, gw = guarded
    port = int(gw.ready["port"])
    head = b"POST /post-only HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    first, second = Conn(port), Conn(port)
    first.send(head + b"a" * 90000)
    scraped = lambda: sample(scrape(metrics_port(gw.ready)),  # noqa: E731
                             "cluster_gateway_body_buffer_bytes")
    wait_for(lambda: scraped() == 90000, 10, "the first body held")
    second.send(head + b"b" * 70000)  # 160,000 would be held: over 150,000
    refused = second.read_response()
    assert refused.status == 503 and refused.header("retry-after") == "1"
    first.send(b"a" * 10000)
    assert first.read_response().status == 200  # whole: it goes on, and gives back
    wait_for(lambda: scraped() == 0, 10, "the budget given back")
    assert get(port, "/post-only", method="POST", body=b"c" * 90000).status == 200
    assert sample(scrape(metrics_port(gw.ready)),
                  "cluster_gateway_body_buffer_refused_total") == 1


def test_chunk_extensions_without_end_are_413(guarded: tuple[Cluster, Proc]) -> None:
    """20 MiB of extensions used to be accepted: they never count toward --max-body."""
    _, gw = guarded
    conn = Conn(int(gw.ready["port"]))
    conn.send(b"POST /post-only HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"1;a=")
    sent = 0
    while sent < 20 * 1024 * 1024 and not select.select([conn.sock], [], [], 0)[0]:
        try:
            conn.send(b"b" * 65536)  # until the answer comes
        except OSError:
            break
        sent += 65536
    assert sent < 4 * 1024 * 1024  # what the sockets' buffers held before it came
    assert conn.read_response().status == 413
    assert "bytes of chunk framing and extensions" in gw.log()


def test_a_client_that_reads_nothing_is_cut(tmp_path: Path) -> None:
    """A 32 MiB static file, never read: the connection used to stay 80-100 s."""
    root = tmp_path / "public"
    root.mkdir()
    (root / "big.bin").write_bytes(b"\0" * (32 * 1024 * 1024))
    with cluster() as c:
        gw = c.gateway("--static", f"/static={root}", "--send-timeout", "1")
        c.worker(APP)
        sock = socket.create_connection(("127.0.0.1", int(gw.ready["port"])), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with sock:
            sock.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            line = gw.wait_log("read nothing of what we sent for 1s", timeout=15)
            assert "(--send-timeout); closing" in line
            assert timeouts(gw, "send") == 1
            got = 0
            try:
                while chunk := sock.recv(1 << 20):  # what TCP held, then the end
                    got += len(chunk)
            except ConnectionResetError:
                pass
            assert got < 32 * 1024 * 1024
        assert get(int(gw.ready["port"]), "/").status == 200


def test_a_client_that_reads_nothing_of_a_last_response_is_cut() -> None:
    """`Connection: close` and a whole 16 MB answer, never read: the gateway closes
    after writing it, the bytes wait in memory, and the send timeout still cuts it."""
    with cluster() as c:
        gw = c.gateway("--send-timeout", "1")
        c.worker(APP)
        sock = socket.create_connection(("127.0.0.1", int(gw.ready["port"])), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with sock:
            sock.sendall(b"GET /big/16000000 HTTP/1.1\r\nHost: x\r\n"
                         b"Connection: close\r\n\r\n")
            line = gw.wait_log("read nothing of what we sent for 1s", timeout=30)
            assert "(--send-timeout); closing" in line
            assert timeouts(gw, "send") == 1


@pytest.fixture(scope="module")
def static_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Path]]:
    root = tmp_path_factory.mktemp("site")
    (root / "index.html").write_bytes(b"<h1>home</h1>")
    (root / ".env").write_bytes(b"SECRET=1")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(b"[core]")
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    with cluster() as c:
        gw = c.gateway("--static", f"/static={root}")
        c.worker(APP)
        yield gw, root


@pytest.mark.parametrize(("path", "status"), [
    ("/static/" + "n" * 256, 404),  # ENAMETOOLONG used to reset the connection
    ("/static/loop-a", 404),  # ELOOP used to log a traceback per request
    ("/static/.env", 404),
    ("/static/.git/config", 404),
    ("/static/index.html/", 404),
    ("/static/index.html", 200),
])
def test_every_static_error_is_an_answer(static_site: tuple[Proc, Path], path: str,
                                         status: int) -> None:
    gw, _ = static_site
    conn = Conn(int(gw.ready["port"]))
    conn.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert conn.read_response().status == status
    conn.send(b"GET /static/index.html HTTP/1.1\r\nHost: x\r\n\r\n")  # and it goes on
    assert conn.read_response().status == 200
    assert "Traceback" not in gw.log()


def test_a_forged_close_reason_stays_on_its_own_line() -> None:
    forged = "\n2026-01-01 00:00:00,000 coordinator[1] ERROR cluster: forged\x1b]0;owned\x07"
    with cluster() as c:
        gw = c.gateway()
        c.worker(WS_APP)
        sock, head = handshake(int(gw.ready["port"]))
        assert b" 101 " in head
        with sock:
            sock.sendall(frame(0x8, (1002).to_bytes(2, "big") + forged.encode()))
            text = gw.wait_log("closed 1002")
    line = next(line for line in text.splitlines() if "closed 1002" in line)
    assert "\\x0a2026-01-01 00:00:00,000 coordinator[1] ERROR cluster: forged" \
           "\\x1b]0;owned\\x07" in line
    assert not any(line.startswith("2026-01-01") for line in text.splitlines())
    assert "\x1b" not in text and "\x07" not in text
