"""Server-Sent Events for real: a handler's answer becomes a stream of a group's
published messages (ids "epoch:offset"), plain broadcasts and pushes; Last-Event-ID
resumes it through another gateway; over HTTP/1.1 (raw bytes) and HTTP/2 (curl);
heartbeats; a slow reader cut; a draining gateway ends its streams; bad answers."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Cluster, cluster, wait_for
from tests.integration.test_observability import metrics_port, sample, scrape
from tests.sse_client import EventStream, open_stream

APP = "tests.apps.clients_app:app"
CURL = shutil.which("curl")


@pytest.fixture
def two_gateways() -> Iterator[tuple[Cluster, list[int]]]:
    with cluster() as c:
        ports = [int(c.gateway("--ws-ping-interval", "0.3").ready["port"])
                 for _ in range(2)]
        c.worker(APP)
        c.worker(APP)
        yield c, ports


def post(port: int, path: str, body: bytes = b"") -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST",
                                     data=body)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def numbered(stream: EventStream) -> list[int]:
    return [json.loads(e.data)["data"]["n"] for e in stream.events
            if e.id and "offset" in json.loads(e.data)]


def in_place(port: int, stream: EventStream, group: str = "everyone") -> None:
    """The stream's groups are in place: a broadcast to one of them arrives."""
    post(port, f"/broadcast?group={group}&text=ready")
    stream.read_until(lambda s: any(e.data == "ready" for e in s.events))


def test_published_broadcast_and_pushed_events_over_http11(
        two_gateways: tuple[Cluster, list[int]]) -> None:
    c, ports = two_gateways
    stream = open_stream(ports[0], "/events?group=room:a&retry=1500")
    try:
        assert stream.status == 200
        assert stream.header("content-type") == "text/event-stream; charset=utf-8"
        assert stream.header("cache-control") == "no-cache"
        assert stream.chunked
        in_place(ports[1], stream)  # broadcast through the other gateway
        post(ports[1], "/publish?group=room:a&first=1&count=3")
        stream.read_until(lambda s: len(numbered(s)) == 3)
        ids = [e.id for e in stream.events if e.id]
        epoch = ids[0].rsplit(":", 1)[0]
        assert ids == [f"{epoch}:1", f"{epoch}:2", f"{epoch}:3"]
        post(ports[0], "/broadcast?group=everyone&text=two%0Alines")
        post(ports[0], f"/push?conn={stream.header('x-conn')}&text=just+you")
        stream.read_until(lambda s: s.events[-1].data == "just you")
        assert [e.data for e in stream.events[-2:]] == ["two\nlines", "just you"]
        assert all(not e.id for e in stream.events[-2:])  # only published ones have ids
        # Keepalive comments (--ws-ping-interval 0.3 here; 20 s by default).
        stream.read_until(lambda s: s.comments >= 2, timeout=10)
        metrics = scrape(metrics_port(c.procs[1].ready))
        assert sample(metrics, "cluster_gateway_connections", protocol="event_stream") == 1
        assert sample(metrics, "cluster_gateway_connections", protocol="websocket") == 0
        assert sample(metrics, "cluster_gateway_event_streams_total") == 1
    finally:
        stream.close()


def test_last_event_id_resumes_through_another_gateway(
        two_gateways: tuple[Cluster, list[int]]) -> None:
    _, ports = two_gateways
    first = open_stream(ports[0], "/events?group=room:r")
    in_place(ports[0], first)
    post(ports[1], "/publish?group=room:r&first=1&count=5")
    first.read_until(lambda s: len(numbered(s)) == 5)
    last_id = [e.id for e in first.events if e.id][-1]
    first.close()  # the browser lost its connection...
    post(ports[1], "/publish?group=room:r&first=6&count=5")  # ...and these meanwhile
    again = open_stream(ports[1], "/events?group=room:r", {"Last-Event-ID": last_id})
    try:
        again.read_until(lambda s: len(numbered(s)) == 5)
        assert json.loads(again.events[0].data) == {
            "group": "room:r", "epoch": last_id.rsplit(":", 1)[0], "recovered": True}
        post(ports[0], "/publish?group=room:r&first=11&count=2")
        again.read_until(lambda s: len(numbered(s)) == 7)
        assert numbered(again) == list(range(6, 13))
    finally:
        again.close()
    # An id from another epoch cannot be resumed: said plainly, then live.
    lost = open_stream(ports[0], "/events?group=room:r", {"Last-Event-ID": "other:3"})
    try:
        lost.read_until(lambda s: len(s.events) >= 1)
        assert json.loads(lost.events[0].data)["recovered"] is False
    finally:
        lost.close()


@pytest.mark.skipif(CURL is None, reason="curl is not installed (make test installs it)")
def test_http2_streams_each_with_its_own_connection_id(
        two_gateways: tuple[Cluster, list[int]]) -> None:
    _, ports = two_gateways
    out = subprocess.Popen(
        [str(CURL), "-sN", "-i", "--http2-prior-knowledge", "--max-time", "20",
         "-H", "accept: text/event-stream", f"http://127.0.0.1:{ports[0]}/events?group=room:h2"],
        stdout=subprocess.PIPE)
    try:
        assert out.stdout is not None
        head = b""
        while b"\r\n\r\n" not in head:
            line = out.stdout.readline()
            assert line, head
            head += line
        assert head.startswith(b"HTTP/2 200"), head
        conn = next(line.split(b":", 1)[1].strip().decode()
                    for line in head.split(b"\r\n") if line.lower().startswith(b"x-conn:"))
        events: list[str] = []

        def until(text: str) -> None:
            deadline = time.monotonic() + 10
            while not any(text in e for e in events):
                assert time.monotonic() < deadline, events
                events.append(out.stdout.readline().decode())  # type: ignore[union-attr]

        post(ports[0], f"/push?conn={conn}&text=pushed")
        until("data: pushed")
        post(ports[1], "/publish?group=room:h2&first=1&count=1")
        until('"offset":1')
        assert any(e.startswith("id: ") for e in events)
        # Another stream on HTTP/2 has another id (the connection's is shared).
        other = subprocess.run(
            [str(CURL), "-s", "-i", "--http2-prior-knowledge", "--max-time", "2",
             "-H", "accept: text/event-stream",
             f"http://127.0.0.1:{ports[0]}/events?group=room:h2"],
            capture_output=True)
        assert b"x-conn: " + conn.encode() not in other.stdout
        assert b"x-conn: " in other.stdout
    finally:
        out.kill()
        out.wait()
        out.stdout.close()  # type: ignore[union-attr]


def test_a_slow_reader_is_cut(two_gateways: tuple[Cluster, list[int]]) -> None:
    c, ports = two_gateways
    gateway = c.procs[1]
    sock = socket.create_connection(("127.0.0.1", ports[0]))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /events?group=room:slow HTTP/1.1\r\nHost: t\r\n\r\n")
    try:
        # Never read: 64 KiB broadcasts pile up past --ws-max-queue (1 MiB).
        big = b"x" * 65536
        deadline = time.monotonic() + 30
        while "reads too slowly" not in gateway.log():
            assert time.monotonic() < deadline, gateway.log()[-3000:]
            for _ in range(8):
                post(ports[1], "/broadcast?group=everyone", big)
    finally:
        sock.close()


def test_a_draining_gateway_ends_its_streams(two_gateways: tuple[Cluster, list[int]]
                                             ) -> None:
    c, ports = two_gateways
    stream = open_stream(ports[0], "/events?group=room:d")
    in_place(ports[0], stream)
    c.procs[1].popen.send_signal(signal.SIGTERM)
    try:
        wait_for(lambda: stream.read_until(lambda s: s.ended, timeout=15) is not None,
                 20, "the stream's end")
        assert stream.raw == b""  # ended with the last chunk: a clean end, not a cut
    finally:
        stream.close()


def test_bad_answers_and_head(two_gateways: tuple[Cluster, list[int]]) -> None:
    _, ports = two_gateways
    refused = open_stream(ports[0], "/events?refuse=1")
    assert refused.status == 403  # an ordinary response: the handler said no
    refused.close()
    bad = open_stream(ports[0], "/events?bad=1")
    assert bad.status == 500  # a stream with another status than 200: a handler bug
    bad.close()
    sock = socket.create_connection(("127.0.0.1", ports[0]), timeout=10)
    sock.sendall(b"HEAD /events HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head = b""
    while chunk := sock.recv(4096):
        head += chunk
    sock.close()
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    assert head.endswith(b"\r\n\r\n")  # the head alone, and the connection closed


@pytest.mark.parametrize(("handler", "stream_path", "publish_path"), [
    ("tests.apps.clients_app:asgi", "/events", "/publish"),  # the cluster extension
    ("tests.apps.clients_app:events_fun", "/?group=room:fun", "/?group=room:fun&n=1"),
], ids=["asgi", "dict-function"])
def test_every_layer_answers_with_a_stream(handler: str, stream_path: str,
                                           publish_path: str) -> None:
    with cluster() as c:
        port = int(c.gateway().ready["port"])
        c.worker(handler)
        stream = open_stream(port, stream_path)
        try:
            assert stream.status == 200 and stream.header("x-conn")
            answer = urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}{publish_path}", method="POST", data=b""),
                timeout=10).read()
            assert answer == b"published"
            stream.read_until(lambda s: any(e.id.endswith(":1") for e in s.events))
            assert json.loads(stream.events[-1].data)["data"] == {"n": 1}
        finally:
            stream.close()


def test_two_streams_on_one_http2_connection_are_two_members(
        two_gateways: tuple[Cluster, list[int]]) -> None:
    """With the h2 library, two event streams multiplexed on one connection: each has
    its own id, a push reaches one, a published message reaches both."""
    from h2.events import DataReceived, ResponseReceived

    from tests.integration.test_http2 import RawClient

    _, ports = two_gateways
    with RawClient(ports[0]) as client:
        sids = []
        for _ in range(2):
            sid = client.h2.get_next_available_stream_id()
            client.h2.send_headers(sid, [
                (b":method", b"GET"), (b":path", b"/events?group=room:mux"),
                (b":scheme", b"http"), (b":authority", b"x"),
                (b"accept", b"text/event-stream")], end_stream=True)
            sids.append(sid)
        client.flush()
        seen = client.events_until(lambda s: sum(isinstance(e, ResponseReceived)
                                                 for e in s) == 2)
        conns = {e.stream_id: dict(e.headers)[b"x-conn"].decode()
                 for e in seen if isinstance(e, ResponseReceived)}
        assert len(set(conns.values())) == 2, conns
        post(ports[0], f"/push?conn={conns[sids[1]]}&text=second+only")
        post(ports[1], "/publish?group=room:mux&first=1&count=1")
        body: dict[int, bytes] = {sid: b"" for sid in sids}
        for e in seen:
            if isinstance(e, DataReceived):
                body[e.stream_id] += e.data
        read = [0]  # events of this call already added to the bodies

        def received(events: list[Any]) -> bool:
            for e in events[read[0]:]:
                if isinstance(e, DataReceived):
                    body[e.stream_id] += e.data
                    client.h2.acknowledge_received_data(len(e.data), e.stream_id)
            read[0] = len(events)
            return all(b'"offset":1' in b for b in body.values()) and \
                b"second only" in body[sids[1]]

        client.events_until(received)
        assert b"second only" not in body[sids[0]]
