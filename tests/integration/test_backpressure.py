"""Streamed responses go at the client's pace: a slow client holds the producer,
not the gateway's memory; a client that leaves stops it."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator

import pytest

from tests.harness import Cluster, Proc, cluster, rss_kib, wait_for
from tests.httpclient import get

APP = "tests.apps.handlers:app"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def streams() -> Iterator[tuple[Cluster, Proc, Proc]]:
    with cluster() as c:
        gw = c.gateway()
        wk = c.worker(APP)
        yield c, gw, wk



@pytest.mark.parametrize("path", ["/huge/64", "/ahuge/64"])
def test_a_client_that_does_not_read_holds_the_stream_not_the_gateway(
        streams: tuple[Cluster, Proc, Proc], path: str) -> None:
    _c, gw, wk = streams
    port = int(gw.ready["port"])
    before_gw, before_wk = rss_kib(gw.pid), rss_kib(wk.pid)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        time.sleep(1.5)  # a duration check: the client reads nothing for a while
        grown_gw = rss_kib(gw.pid) - before_gw
        grown_wk = rss_kib(wk.pid) - before_wk
        received = 0
        while chunk := s.recv(1 << 20):
            received += len(chunk)
    # 64 MiB went through; neither side held more than a few windows of it.
    assert received > 64 * MIB
    assert grown_gw < 16 * 1024, f"gateway grew {grown_gw} KiB"
    assert grown_wk < 16 * 1024, f"worker grew {grown_wk} KiB"


@pytest.mark.parametrize(("path", "event"), [("/huge/512", "sync stopped early"),
                                             ("/ahuge/512", "async stopped early")])
def test_a_client_that_leaves_stops_the_producer(
        streams: tuple[Cluster, Proc, Proc], path: str, event: str) -> None:
    _c, gw, _wk = streams
    port = int(gw.ready["port"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(65536)  # the stream has begun
    wait_for(lambda: event in json.loads(get(port, "/stream-events").body), 15,
             f"{event!r}: the generator closed")
    # Its dispatch credit came back: the worker still answers.
    assert get(port, "/items/1").status == 200


def test_a_websocket_client_cannot_flood_its_worker() -> None:
    from tests import wsclient
    with cluster() as c:
        gw = c.gateway()
        wk = c.worker("tests.apps.ws_app:app")
        port = int(gw.ready["port"])
        sock, head = wsclient.handshake(port, path="/slow")
        assert head.startswith(b"HTTP/1.1 101")
        before_gw, before_wk = rss_kib(gw.pid), rss_kib(wk.pid)
        stream = memoryview(wsclient.frame(0x2, b"m" * 65536) * 1024)  # 64 MiB of frames
        sock.setblocking(False)
        pushed, deadline = 0, time.monotonic() + 3
        while pushed < len(stream):  # push for 3 s, as fast as the socket takes it
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if select.select([], [sock], [], left)[1]:
                with contextlib.suppress(BlockingIOError):
                    pushed += sock.send(stream[pushed:pushed + MIB])
        # The slow handler takes 50 messages a second; the rest waits in TCP
        # buffers, which push back on the client, not in the gateway or the worker.
        assert pushed < 48 * MIB, f"the client pushed {pushed // MIB} MiB"
        assert rss_kib(gw.pid) - before_gw < 16 * 1024
        assert rss_kib(wk.pid) - before_wk < 16 * 1024
        seen = int(get(port, "/slow-seen").body)
        assert 0 < seen < 400
        sock.close()
