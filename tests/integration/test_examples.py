"""The examples, run as a user would: through real gateways and workers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect

from tests.harness import cluster
from tests.httpclient import get


def test_chat_across_two_gateways() -> None:
    with cluster() as c:
        g1, g2 = c.gateway(), c.gateway()
        c.worker("examples.chat:app")
        c.worker("examples.chat:app")
        assert b"cluster chat" in get(int(g1.ready["port"]), "/").body

        async def go() -> None:
            u1 = f"ws://127.0.0.1:{g1.ready['port']}/chat/lobby?name=ann"
            u2 = f"ws://127.0.0.1:{g2.ready['port']}/chat/lobby?name=bob"
            async with connect(u1) as ann, connect(u2) as bob:
                await ann.send("/hello")
                await bob.send("/hello")

                async def until(ws: Any, pred: Any) -> dict[str, Any]:
                    while True:
                        msg: dict[str, Any] = json.loads(await ws.recv())
                        if pred(msg):
                            return msg

                both = lambda m: m.get("type") == "presence" and \
                    m["names"] == ["ann", "bob"]  # noqa: E731
                await until(ann, both)
                await until(bob, both)
                await ann.send("hi bob")
                msg = await until(bob, lambda m: "offset" in m)  # published, numbered
                assert msg["group"] == "room:lobby" and msg["offset"] == 1
                assert msg["data"] == {"type": "message", "name": "ann", "text": "hi bob"}
        asyncio.run(asyncio.wait_for(go(), 20))


def test_counter_example() -> None:
    with cluster() as c:
        gw = c.gateway()
        c.worker("examples.counter:app")
        c.worker("examples.counter:app")
        port = int(gw.ready["port"])
        values = [json.loads(get(port, "/counter", method="POST").body)["counter"]
                  for _ in range(5)]
        assert values == [1, 2, 3, 4, 5]
        assert json.loads(get(port, "/map/color", method="PUT", body=b"blue").body) == \
            {"color": "blue"}
        assert json.loads(get(port, "/map").body) == {"color": "blue"}
