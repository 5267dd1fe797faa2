"""WebSocket RPC (seed WsAppy) on real processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.harness import Cluster, Proc, cluster

APP = "tests.apps.rpc_app:app"


@pytest.fixture(scope="module")
def rpc_cluster() -> Iterator[tuple[Cluster, Proc, Proc]]:
    with cluster() as c:
        gw = c.gateway()
        wk = c.worker(APP)
        yield c, gw, wk


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def call(ws: ClientConnection, message: Any) -> dict[str, Any]:
    await ws.send(message if isinstance(message, str) else json.dumps(message))
    return json.loads(await ws.recv())  # type: ignore[no-any-return]


def test_wsappy_example_and_handler_classes(rpc_cluster: tuple[Cluster, Proc, Proc]) -> None:
    _c, gw, _wk = rpc_cluster

    async def go() -> None:
        async with connect(f"ws://127.0.0.1:{gw.ready['port']}/api") as ws:
            for rid, item_id in enumerate((42, 15, 30), start=1):
                answer = await call(ws, {"module": "entity", "method": "get",
                                         "data": {"item_id": item_id}, "request_id": rid})
                assert answer["request_id"] == rid and answer["event"] == "result"
                assert answer["module"] == "entity"
                assert answer["data"]["items"][0]["id"] == item_id
            answer = await call(ws, {"module": "entity", "method": "count", "request_id": "x"})
            assert answer == {"request_id": "x", "event": "result", "module": "entity",
                              "data": 3}
            first = await call(ws, {"module": "counter", "method": "incr",
                                    "data": {"by": 2}, "request_id": 9})
            second = await call(ws, {"module": "counter", "method": "incr", "request_id": 10})
            assert second["data"]["value"] == first["data"]["value"] + 1  # shared state
            assert first["data"]["conn"].startswith(gw.ready["id"] + "/")
    run(go())


@pytest.mark.parametrize(("message", "kind", "request_id"), [
    ("not json at all", "bad_request", None),
    ("[1, 2]", "bad_request", None),
    ({"module": "entity", "method": "get", "data": {"item_id": 1}}, "bad_request", None),
    ({"module": "entity", "method": "nope", "request_id": 1}, "not_found", 1),
    ({"module": "entity", "method": "_private", "request_id": 2}, "not_found", 2),
    ({"module": "admin", "method": "ping", "request_id": 3}, "not_found", 3),  # other path
    ({"module": "entity", "method": "get", "data": {"wrong": 1}, "request_id": 4},
     "bad_request", 4),
    ({"module": "entity", "method": "get", "data": [1], "request_id": 5}, "bad_request", 5),
    ({"module": "debug", "method": "fail", "request_id": 6}, "internal", 6),
])
def test_bad_calls_get_an_error_event_and_the_connection_stays(
        rpc_cluster: tuple[Cluster, Proc, Proc], message: Any, kind: str,
        request_id: Any) -> None:
    _c, gw, wk = rpc_cluster

    async def go() -> None:
        async with connect(f"ws://127.0.0.1:{gw.ready['port']}/api") as ws:
            answer = await call(ws, message)
            assert answer["event"] == "error" and answer["data"]["error"] == kind
            assert answer["request_id"] == request_id
            ok = await call(ws, {"module": "entity", "method": "count", "request_id": 99})
            assert ok["event"] == "result"  # still connected, still served
    run(go())
    if kind == "internal":
        wk.wait_log("RPC debug.fail (request 6) raised")


def test_clients_are_routed_by_path(rpc_cluster: tuple[Cluster, Proc, Proc]) -> None:
    _c, gw, _wk = rpc_cluster

    async def go() -> None:
        async with connect(f"ws://127.0.0.1:{gw.ready['port']}/admin") as ws:
            answer = await call(ws, {"module": "admin", "method": "ping", "request_id": 1})
            assert answer["data"] == "pong"
            answer = await call(ws, {"module": "entity", "method": "count", "request_id": 2})
            assert answer["data"]["error"] == "not_found"
    run(go())
