"""ASGI applications on the cluster: a raw app, Starlette and FastAPI, real processes."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect

from tests.harness import Cluster, Proc, cluster, rss_kib, wait_for
from tests.httpclient import get

RAW = "tests.apps.asgi_apps:raw"


def url(gw: Proc, path: str) -> str:
    return f"ws://127.0.0.1:{gw.ready['port']}{path}"


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def multipart(fields: dict[str, str], name: str, filename: str, content: bytes
              ) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                 f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


@pytest.fixture(scope="module")
def raw_cluster() -> Iterator[tuple[Cluster, Proc, Proc]]:
    with cluster() as c:
        gw = c.gateway()
        wk = c.worker(RAW)
        yield c, gw, wk


def test_raw_app_sees_a_full_http_scope(raw_cluster: tuple[Cluster, Proc, Proc]) -> None:
    _c, gw, wk = raw_cluster
    assert wk.ready["handler"] == "asgi"
    resp = get(int(gw.ready["port"]), "/echo?a=1", method="POST", body=b"payload",
               headers={"X-Test": "yes"})
    assert resp.status == 200
    seen = json.loads(resp.body)
    assert seen["method"] == "POST" and seen["path"] == "/echo" and seen["query"] == "a=1"
    assert seen["body"] == "payload" and seen["more_body"] is False
    assert seen["headers"]["x-test"] == "yes" and seen["client"] is True
    assert seen["asgi"]["version"] == "3.0"
    assert seen["state"] == {"greeting": "started once"}  # from lifespan startup


def test_raw_app_streams(raw_cluster: tuple[Cluster, Proc, Proc]) -> None:
    _c, gw, _wk = raw_cluster
    resp = get(int(gw.ready["port"]), "/stream")
    assert resp.status == 200 and resp.body == b"part 0\npart 1\npart 2\n"
    assert resp.header("transfer-encoding") == "chunked"


@pytest.mark.parametrize(("path", "mistake"), [
    ("/body-before-start", "http.response.body before http.response.start"),
    ("/start-twice", "http.response.start sent twice"),
    ("/no-response", "returned without completing its response"),
    ("/raise", "ASGI app raised"),
])
def test_an_app_that_breaks_the_protocol_gets_500_and_a_log_line(
        raw_cluster: tuple[Cluster, Proc, Proc], path: str, mistake: str) -> None:
    _c, gw, wk = raw_cluster
    resp = get(int(gw.ready["port"]), path)
    assert resp.status == 500 and b"request gw-" in resp.body
    wk.wait_log(mistake)
    assert get(int(gw.ready["port"]), "/echo").status == 200  # the worker lives on


def test_http_disconnect_when_the_client_goes_away(
        raw_cluster: tuple[Cluster, Proc, Proc]) -> None:
    _c, gw, _wk = raw_cluster
    port = int(gw.ready["port"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /wait-for-disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
        # The request must reach the app before we hang up.
        wait_for(lambda: get(port, "/gone").status == 200, 5, "the app running")
    wait_for(lambda: "http.disconnect" in json.loads(get(port, "/gone").body), 10,
             "http.disconnect delivered to the app")
    assert get(port, "/echo").status == 200  # and its credit came back


def test_shared_state_from_inside_an_asgi_app(raw_cluster: tuple[Cluster, Proc, Proc]
                                              ) -> None:
    _c, gw, _wk = raw_cluster
    port = int(gw.ready["port"])
    first = json.loads(get(port, "/state").body)
    assert json.loads(get(port, "/state").body) == first + 1


def test_raw_websocket_accept_send_close(raw_cluster: tuple[Cluster, Proc, Proc]) -> None:
    _c, gw, _wk = raw_cluster

    async def go() -> None:
        async with connect(url(gw, "/ws"), subprotocols=["chat"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "chat"
            assert ws.response.headers["x-asgi"] == "yes"
            await ws.send("hi")
            assert await ws.recv() == "echo hi"
            await ws.send(b"abc")
            assert await ws.recv() == b"cba"
            await ws.send("who")
            assert (await ws.recv()).startswith(gw.ready["id"] + "/")
            await ws.send("close")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    run(go())


def test_raw_websocket_refusals(raw_cluster: tuple[Cluster, Proc, Proc]) -> None:
    _c, gw, wk = raw_cluster

    async def status(path: str) -> tuple[int, bytes]:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(url(gw, path)):
                pass
        return refused.value.response.status_code, refused.value.response.body or b""
    assert run(status("/ws-deny"))[0] == 403
    assert run(status("/ws-http")) == (401, b"who are you?")
    assert run(status("/ws-send-first"))[0] == 500
    wk.wait_log("websocket.send before websocket.accept")


def test_a_websocket_app_breaking_the_order_is_closed_1011(
        raw_cluster: tuple[Cluster, Proc, Proc]) -> None:
    _c, gw, wk = raw_cluster

    async def go() -> None:
        async with connect(url(gw, "/ws-accept-twice")) as ws:
            await ws.send("anything")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    run(go())
    wk.wait_log("websocket.accept after the handshake was decided")


def test_lifespan_startup_failure_is_one_line_and_nonzero(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    from tests.harness import ROOT
    app = tmp_path / "failing_app.py"
    app.write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] == 'lifespan':\n"
        "        await receive()\n"
        "        await send({'type': 'lifespan.startup.failed', 'message': 'no db'})\n")
    result = subprocess.run([sys.executable, "-m", "cluster", "worker", "--handler",
                             "failing_app:app", "--coordinator", "tcp://127.0.0.1:1"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                 "CLUSTER_KEYS": os.environ["CLUSTER_KEYS"]})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "lifespan startup failed: no db" in lines[0], result.stderr


# -- Starlette and FastAPI ------------------------------------------------------------

@pytest.fixture(scope="module")
def starlette_cluster() -> Iterator[tuple[Cluster, Proc]]:
    pytest.importorskip("starlette")
    with cluster() as c:
        gw = c.gateway()
        c.worker("tests.apps.asgi_apps:starlette_app")
        yield c, gw


def test_starlette_routes_json_upload_stream(starlette_cluster: tuple[Cluster, Proc]) -> None:
    _c, gw = starlette_cluster
    port = int(gw.ready["port"])
    resp = get(port, "/items/42?q=x")
    assert resp.status == 200
    assert json.loads(resp.body) == {"id": 42, "q": "x", "db": "connected at startup"}
    resp = get(port, "/json", method="POST", body=b'{"a": [1, 2]}',
               headers={"Content-Type": "application/json"})
    assert resp.status == 201 and json.loads(resp.body) == {"got": {"a": [1, 2]}}
    ctype, body = multipart({"note": "hello"}, "file", "data.bin", b"\x00\x01" * 5000)
    resp = get(port, "/upload", method="POST", body=body, headers={"Content-Type": ctype})
    assert resp.status == 200
    assert json.loads(resp.body) == {"name": "data.bin", "size": 10000, "field": "hello"}
    resp = get(port, "/stream")
    assert resp.status == 200 and resp.body == b"0\n1\n2\n3\n4\n"
    assert get(port, "/nope").status == 404


def test_starlette_background_task_runs_after_the_response(
        starlette_cluster: tuple[Cluster, Proc]) -> None:
    _c, gw = starlette_cluster
    port = int(gw.ready["port"])
    assert get(port, "/background").body == b"queued"
    wait_for(lambda: json.loads(get(port, "/background-done").body) == ["ran"], 10,
             "the background task")


def test_starlette_websocket_with_cluster_broadcast(
        starlette_cluster: tuple[Cluster, Proc]) -> None:
    _c, gw = starlette_cluster

    async def go() -> None:
        async with connect(url(gw, "/ws")) as ws:
            await ws.send("hello")
            assert await ws.recv() == "HELLO"
            await ws.send("room")  # broadcast() from inside Starlette: no error
            assert await ws.recv() == "ROOM"
    run(go())


@pytest.fixture(scope="module")
def fastapi_cluster() -> Iterator[tuple[Cluster, Proc]]:
    pytest.importorskip("fastapi")
    with cluster() as c:
        gw = c.gateway()
        c.worker("tests.apps.asgi_apps:fastapi_app")
        yield c, gw


def test_fastapi_paths_models_upload_stream(fastapi_cluster: tuple[Cluster, Proc]) -> None:
    _c, gw = fastapi_cluster
    port = int(gw.ready["port"])
    resp = get(port, "/items/7?q=z")
    assert json.loads(resp.body) == {"id": 7, "q": "z", "lifespan": "startup"}
    assert get(port, "/items/notanumber").status == 422
    resp = get(port, "/items", method="POST", body=b'{"name": "pen", "price": 1.5}',
               headers={"Content-Type": "application/json"})
    assert resp.status == 201 and json.loads(resp.body) == {"name": "pen", "price": 1.5}
    assert get(port, "/items", method="POST", body=b'{"name": 1}',
               headers={"Content-Type": "application/json"}).status == 422
    ctype, body = multipart({"note": "n"}, "file", "f.txt", b"x" * 300)
    resp = get(port, "/upload", method="POST", body=body, headers={"Content-Type": ctype})
    assert json.loads(resp.body) == {"name": "f.txt", "size": 300, "note": "n"}
    assert get(port, "/stream").body == b"chunk 0\nchunk 1\nchunk 2\n"
    assert json.loads(get(port, "/sync").body) == {"sync": "ok"}
    get(port, "/background")
    wait_for(lambda: json.loads(get(port, "/background-done").body) == ["ran"], 10,
             "the background task")


def test_fastapi_websocket(fastapi_cluster: tuple[Cluster, Proc]) -> None:
    _c, gw = fastapi_cluster

    async def go() -> None:
        async with connect(url(gw, "/ws")) as ws:
            await ws.send(json.dumps({"n": 1}))
            assert json.loads(await ws.recv()) == {"echo": {"n": 1}}
    run(go())


def test_an_asgi_stream_goes_at_the_clients_pace(raw_cluster: tuple[Cluster, Proc, Proc]
                                                 ) -> None:
    _c, gw, _wk = raw_cluster
    port = int(gw.ready["port"])
    before = rss_kib(gw.pid)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        import time
        time.sleep(1.0)  # a duration check: the client reads nothing for a while
        grown = rss_kib(gw.pid) - before
    # ...then leaves: the app's send raises, and it stops.
    assert grown < 16 * 1024, f"gateway grew {grown} KiB"
    wait_for(lambda: "stream stopped early" in json.loads(get(port, "/gone").body), 15,
             "the app told that the client left")
    assert get(port, "/echo").status == 200
