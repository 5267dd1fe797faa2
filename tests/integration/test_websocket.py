"""WebSocket through real gateways and workers: protocol, push, groups, failures."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests import wsclient
from tests.harness import Cluster, Proc, cluster, wait_for, wait_until

WS_APP = "tests.apps.ws_app:app"
Fixture = tuple[Cluster, list[Proc]]


@pytest.fixture(scope="module")
def ws_cluster() -> Iterator[Fixture]:
    """Two gateways, two workers."""
    with cluster() as c:
        gateways = [c.gateway("--ws-max-size", "65536", "--ws-origins",
                              "http://good.example,null"),
                    c.gateway("--ws-max-size", "65536")]
        c.worker(WS_APP)
        c.worker(WS_APP)
        yield c, gateways


def url(gw: Proc, path: str) -> str:
    return f"ws://127.0.0.1:{gw.ready['port']}{path}"


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def recv_json(ws: ClientConnection) -> Any:
    return json.loads(await ws.recv())


def test_echo_text_binary_and_subprotocol(ws_cluster: Fixture) -> None:
    async def go() -> None:
        async with connect(url(ws_cluster[1][0], "/echo"), subprotocols=["a", "b"]) as ws:
            assert ws.subprotocol == "b"
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\xff")
            assert await ws.recv() == b"\x00\xff"
    run(go())


def test_messages_of_one_connection_stay_in_order(ws_cluster: Fixture) -> None:
    async def go() -> None:
        async with connect(url(ws_cluster[1][1], "/order")) as ws:
            for i in range(200):
                await ws.send(str(i))
            got = [await ws.recv() for _ in range(200)]
            assert got == [str(i) for i in range(200)]
    run(go())


def test_one_connection_sticks_to_one_worker(ws_cluster: Fixture) -> None:
    async def go() -> None:
        async with connect(url(ws_cluster[1][0], "/echo")) as ws:
            pids = set()
            for _ in range(10):
                await ws.send("whoami")
                pids.add((await recv_json(ws))["pid"])
            assert len(pids) == 1
    run(go())


def test_refusals_are_http_statuses(ws_cluster: Fixture) -> None:
    async def status(path: str) -> int:
        try:
            async with connect(url(ws_cluster[1][0], path)):
                return 101
        except websockets.InvalidStatus as exc:
            return int(exc.response.status_code)
    assert run(status("/deny")) == 403
    assert run(status("/nowhere")) == 404


def test_broadcast_and_presence_across_gateways(ws_cluster: Fixture) -> None:
    g1, g2 = ws_cluster[1]

    async def go() -> None:
        async with connect(url(g1, "/room/r1")) as a, connect(url(g2, "/room/r1")) as b, \
                connect(url(g2, "/room/r1")) as c, connect(url(g1, "/room/other")) as d:
            await a.send("who")
            who = await recv_json(a)
            assert who["count"] == 3
            assert {conn.split("/")[0] for conn in who["conns"]} == \
                {g1.ready["id"], g2.ready["id"]}
            await a.send("hi room")
            got_b, got_c = await b.recv(), await c.recv()
            assert got_b == got_c and str(got_b).endswith(": hi room")
            with pytest.raises(TimeoutError):  # not to itself, not to another room
                await asyncio.wait_for(a.recv(), 0.3)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(d.recv(), 0.1)
    run(go())


def test_presence_from_a_sync_handler(ws_cluster: Fixture) -> None:
    g1, g2 = ws_cluster[1]

    async def go() -> None:
        async with connect(url(g1, "/sync-room/s")) as a, connect(url(g2, "/room/s")):
            await a.send("who")
            assert (await recv_json(a))["count"] == 2
    run(go())


def test_push_to_a_connection_on_another_gateway(ws_cluster: Fixture) -> None:
    g1, g2 = ws_cluster[1]

    async def go() -> None:
        async with connect(url(g1, "/room/p")) as a, connect(url(g2, "/echo")) as b:
            await b.send("whoami")
            target = (await recv_json(b))["conn"]
            await a.send(f"push {target} ding")
            assert await b.recv() == "ding"
            assert (await recv_json(a)) == {"pushed": True}
            await a.send(f"push {g2.ready['id']}/999999 lost")
            assert (await recv_json(a)) == {"pushed": True}  # its gateway exists...
        # ...and the gateway reports the push to a connection that is gone.
        g2.wait_log("push to connection")
    run(go())


def test_leaving_a_group_on_close(ws_cluster: Fixture) -> None:
    g1 = ws_cluster[1][0]

    async def go() -> None:
        async with connect(url(g1, "/room/c")) as a:
            async with connect(url(g1, "/room/c")):
                pass

            async def alone() -> bool:
                await a.send("who")
                return bool((await recv_json(a))["count"] == 1)

            await wait_until(alone, 5, "the closed connection to leave the group")
    run(go())


def test_handler_closes_with_code(ws_cluster: Fixture) -> None:
    async def go() -> None:
        async with connect(url(ws_cluster[1][0], "/echo")) as ws:
            await ws.send("close-me")
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 4000
            assert info.value.rcvd.reason == "as you wish"
    run(go())


def test_handler_failure_closes_1011(ws_cluster: Fixture) -> None:
    async def go() -> None:
        async with connect(url(ws_cluster[1][0], "/echo")) as ws:
            await ws.send("boom")
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    run(go())


def test_permessage_deflate_is_negotiated(ws_cluster: Fixture) -> None:
    sock, head = wsclient.handshake(int(ws_cluster[1][0].ready["port"]),
                                    extra="Sec-WebSocket-Extensions: permessage-deflate\r\n")
    sock.close()
    assert head.startswith(b"HTTP/1.1 101") and b"permessage-deflate" in head.lower()


# -- bad input -------------------------------------------------------------------

def bad_frame_close_code(fx: Fixture, data: bytes, extra: str = "") -> int | None:
    sock, head = wsclient.handshake(int(fx[1][1].ready["port"]), extra=extra)
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(data)
        return wsclient.read_close(sock)
    finally:
        sock.close()


@pytest.mark.parametrize("data,code", [
    (wsclient.frame(0x1, b"hi", mask=False), 1002),
    (wsclient.frame(0x1, b"hi", rsv=0b100), 1002),
    (wsclient.frame(0x3, b"hi"), 1002),
    (wsclient.frame(0xB, b"hi"), 1002),
    (wsclient.frame(0x1, b"\xff\xfe"), 1007),
    (wsclient.frame(0x1, b"\xe2\x82", fin=False) + wsclient.frame(0x0, b"\x28"), 1007),
    (wsclient.frame(0x9, b"x", fin=False), 1002),
    (wsclient.frame(0x9, b"x" * 126), 1002),
    (wsclient.frame(0x0, b"no start"), 1002),
    (wsclient.frame(0x2, b"x" * 70000), 1009),
    (wsclient.frame(0x2, b"x" * 40000, fin=False) + wsclient.frame(0x0, b"x" * 40000), 1009),
], ids=["unmasked", "reserved-bits", "reserved-opcode", "reserved-control-opcode",
        "bad-utf8", "bad-utf8-across-fragments", "fragmented-ping", "ping-over-125",
        "orphan-continuation", "too-big", "too-big-in-fragments"])
def test_protocol_violations_close_with_the_right_code(ws_cluster: Fixture, data: bytes,
                                                       code: int) -> None:
    assert bad_frame_close_code(ws_cluster, data) == code
    # One log line names it, and the gateway counts it for its metrics.
    gw = ws_cluster[1][1]
    gw.wait_log(f"closed {code}:")
    metrics = get_metrics(gw)
    assert f'cluster_gateway_parse_errors_total{{kind="websocket_{code}"}}' in metrics


def get_metrics(gw: Proc) -> str:
    from tests.httpclient import get
    return get(int(gw.ready["metrics"].rpartition(":")[2]), "/metrics").body.decode()


def test_deflate_bomb_is_1009_and_bounded(ws_cluster: Fixture) -> None:
    # 10 MB of zeros compress to about 10 KB: far under the limit on the wire, far
    # over it once inflated. The limit must hold during decompression.
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"\x00" * 10_000_000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    bomb = bomb[:-4]  # permessage-deflate drops the trailing 00 00 ff ff
    data = wsclient.frame(0x2, bomb, rsv=0b100)
    assert len(data) < 65536
    code = bad_frame_close_code(ws_cluster, data,
                                extra="Sec-WebSocket-Extensions: permessage-deflate\r\n")
    assert code == 1009


def test_bad_handshakes(ws_cluster: Fixture) -> None:
    port = int(ws_cluster[1][1].ready["port"])
    sock, head = wsclient.handshake(port, key="")
    sock.close()
    assert head.startswith(b"HTTP/1.1 400")
    sock, head = wsclient.handshake(port, key="dG9vIHNob3J0")  # not 16 bytes
    sock.close()
    assert head.startswith(b"HTTP/1.1 400")
    sock = __import__("socket").create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
                 b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 8\r\n\r\n")
    reply = sock.recv(4096)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 426") and b"sec-websocket-version: 13" in reply


def test_origin_allow_list(ws_cluster: Fixture) -> None:
    port = int(ws_cluster[1][0].ready["port"])
    sock, head = wsclient.handshake(port, extra="Origin: http://evil.example\r\n")
    sock.close()
    assert head.startswith(b"HTTP/1.1 403")
    sock, head = wsclient.handshake(port, extra="Origin: http://good.example\r\n")
    sock.close()
    assert head.startswith(b"HTTP/1.1 101")
    sock, head = wsclient.handshake(port)  # no Origin: not a browser
    sock.close()
    assert head.startswith(b"HTTP/1.1 101")


def test_a_page_on_another_site_cannot_open_a_websocket_by_default() -> None:
    """Cross-Site WebSocket Hijacking: with no --ws-origins, only the page's own host."""
    with cluster() as c:
        gw = c.gateway()
        c.worker(WS_APP)
        port = int(gw.ready["port"])
        cookie = "Cookie: session=stolen\r\n"
        sock, head = wsclient.handshake(port, extra=f"Origin: http://evil.example\r\n{cookie}")
        sock.close()
        assert head.startswith(b"HTTP/1.1 403")
        line = gw.wait_log("WebSocket upgrade refused")
        assert "Origin 'http://evil.example' is another site's" in line
        sock, head = wsclient.handshake(port, extra=f"Origin: http://x\r\n{cookie}")
        sock.close()
        assert head.startswith(b"HTTP/1.1 101")  # Host is x: the same site
        sock, head = wsclient.handshake(port)  # no Origin: not a browser
        sock.close()
        assert head.startswith(b"HTTP/1.1 101")


def test_plain_http_still_served(ws_cluster: Fixture) -> None:
    from tests.httpclient import get
    assert get(int(ws_cluster[1][0].ready["port"]), "/").body == b"plain http still works\n"


# -- time, slowness and failure ---------------------------------------------------

def test_no_pong_closes_1011_after_interval_plus_timeout() -> None:
    with cluster() as c:
        gw = c.gateway("--ws-ping-interval", "0.5", "--ws-ping-timeout", "0.5")
        c.worker(WS_APP)
        sock, head = wsclient.handshake(int(gw.ready["port"]))
        assert head.startswith(b"HTTP/1.1 101")
        import time
        start = time.monotonic()
        try:
            # We never answer pings: the server must give up on us, with 1011, within
            # read_close's 5 s (interval + timeout + two 0.5 s sweeps on a quiet machine;
            # a busy one may be later, which is not what this test is about) ...
            assert wsclient.read_close(sock, timeout=5) == 1011
            # ... and not before a ping went out and its pong was overdue.
            assert time.monotonic() - start >= 0.5 + 0.5 - 0.1
        finally:
            sock.close()


def test_answered_pings_keep_the_connection() -> None:
    with cluster() as c:
        gw = c.gateway("--ws-ping-interval", "0.3", "--ws-ping-timeout", "0.3")
        c.worker(WS_APP)

        async def go() -> None:
            async with connect(url(gw, "/echo"), ping_interval=None) as ws:
                # poll: a duration check, not a wait for an event: the connection must
                # outlive several ping intervals (the client answers pings by itself).
                await asyncio.sleep(1.5)
                await ws.send("still here")
                assert await ws.recv() == "still here"
        run(go())


def test_slow_reader_is_closed_1013_and_memory_stays_bounded() -> None:
    with cluster() as c:
        gw = c.gateway("--ws-max-queue", "100000")
        c.worker(WS_APP)
        sock, head = wsclient.handshake(int(gw.ready["port"]), path="/echo")
        assert head.startswith(b"HTTP/1.1 101")
        sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
        try:
            # Ask for echoes of 60 KB messages and never read them.
            for _ in range(200):
                sock.sendall(wsclient.frame(0x2, b"y" * 60000))
                if "reads too slowly" in gw.log():
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us: what we wanted
        finally:
            sock.close()
        gw.wait_log("reads too slowly")
        assert "Traceback" not in gw.log()


def test_worker_death_closes_its_connections_1012() -> None:
    with cluster() as c:
        gw = c.gateway()
        victim = c.worker(WS_APP)

        async def go() -> None:
            async with connect(url(gw, "/echo")) as ws:
                await ws.send("whoami")
                assert (await recv_json(ws))["pid"] == victim.pid
                victim.kill()
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd is not None and info.value.rcvd.code == 1012
        run(go())


def test_no_worker_is_503() -> None:
    with cluster() as c:
        gw = c.gateway()
        sock, head = wsclient.handshake(int(gw.ready["port"]))
        sock.close()
        assert head.startswith(b"HTTP/1.1 503")


def test_gateway_shutdown_closes_1001() -> None:
    with cluster() as c:
        gw = c.gateway()
        c.worker(WS_APP)

        async def go() -> None:
            async with connect(url(gw, "/echo")) as ws:
                await ws.send("x")
                await ws.recv()
                gw.popen.send_signal(__import__("signal").SIGTERM)
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        run(go())
        wait_for(lambda: gw.popen.poll() is not None, 15, "the gateway to exit")


def test_publisher_from_outside_reaches_every_gateway(ws_cluster: Fixture) -> None:
    from cluster.publisher import Publisher
    c, (g1, g2) = ws_cluster

    async def go() -> None:
        async with connect(url(g1, "/room/pub")) as a, connect(url(g2, "/room/pub")) as b, \
                connect(url(g2, "/echo")) as e:
            await a.send("who")  # in the group once the worker answered
            assert (await recv_json(a))["count"] == 2
            await e.send("whoami")
            target = (await recv_json(e))["conn"]
            with Publisher(c.endpoint, keys=c.keys) as pub:
                assert await asyncio.to_thread(pub.broadcast, "room:pub", {"n": 1}) == 2
                assert await asyncio.to_thread(pub.push, target, "direct")
                assert not await asyncio.to_thread(pub.push, "gw-nowhere/1", "x")
            assert await recv_json(a) == {"n": 1} and await recv_json(b) == {"n": 1}
            assert await e.recv() == "direct"
    run(go())


def test_an_upgrade_pipelined_behind_requests_switches_after_their_answers(
        ws_cluster: Fixture) -> None:
    """Two plain requests and a WebSocket upgrade in one write: both answered, in
    order, then 101, and the connection speaks WebSocket (before: 400)."""
    import socket
    port = int(ws_cluster[1][1].ready["port"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /sleep/0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        data = b""
        while not (b"HTTP/1.1 101" in data and data.endswith(b"\r\n\r\n")):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        first = data.index(b"plain http still works")
        second = data.index(b"slept")
        switch = data.index(b"HTTP/1.1 101")
        assert first < second < switch, data
        sock.sendall(wsclient.frame(0x1, b"hi after the pipeline"))
        reply = b""
        while b"hi after the pipeline" not in reply:
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
        assert reply[0] == 0x81  # a text frame, unmasked, from the server
