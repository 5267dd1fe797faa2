"""WebSocket RPC for the tests: WsAppy's example, plus failures."""

from __future__ import annotations

from typing import Any

from cluster import App

app = App()


class EntityHandler:
    def __init__(self) -> None:
        self.data = [{"id": 42, "name": "a"}, {"id": 15, "name": "b"}, {"id": 30, "name": "c"}]

    def get(self, req: dict[str, Any], item_id: int) -> dict[str, Any]:
        return {"items": [x for x in self.data if x["id"] == item_id]}

    async def count(self, req: dict[str, Any]) -> int:
        return len(self.data)

    def _private(self, req: dict[str, Any]) -> None:
        raise AssertionError("never exposed")


app.rpc_handler("entity", EntityHandler(), path="/api")


@app.rpc("counter.incr", path="/api")
def incr(req: dict[str, Any], by: int = 1) -> dict[str, Any]:
    return {"value": req["state"].incr("rpc-counter", by), "conn": req["conn"]}


@app.rpc("debug.fail", path="/api")
async def fail(req: dict[str, Any]) -> None:
    raise RuntimeError("this method always fails")


@app.rpc("admin.ping", path="/admin")
def ping(req: dict[str, Any]) -> str:
    return "pong"
