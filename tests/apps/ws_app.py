"""WebSocket handlers for the tests, run inside real worker processes."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from cluster import App, broadcast, join, members, push

app = App()


@app.websocket("/echo")
def echo(req: dict[str, Any]) -> dict[str, Any] | None:
    if req["type"] == "ws.connect":
        proto = "b" if "b" in req["subprotocols"] else None
        return {"accept": True, "subprotocol": proto}
    if req["type"] == "ws.message":
        if req["text"] == "whoami":
            return {"send": {"pid": os.getpid(), "conn": req["conn"]}}
        if req["text"] == "close-me":
            return {"close": [4000, "as you wish"]}
        if req["text"] == "boom":
            raise RuntimeError("handler failure")
        return {"send": req["text"] if req["text"] is not None else req["bytes"]}
    return None


@app.websocket("/order")
async def order(req: dict[str, Any]) -> dict[str, Any] | None:
    if req["type"] == "ws.connect":
        return {"accept": True}
    if req["type"] == "ws.message":
        return {"send": req["text"]}
    return None


@app.websocket("/room/<name>")
async def room(req: dict[str, Any], name: str) -> dict[str, Any] | None:
    group = f"room:{name}"
    if req["type"] == "ws.connect":
        return {"accept": True, "join": group}
    if req["type"] == "ws.message":
        text = req["text"] or ""
        if text == "who":
            return {"send": await members(group)}
        if text.startswith("push "):
            _, target, data = text.split(" ", 2)
            return {"send": {"pushed": push(target, data)}}
        broadcast(group, f"{req['conn']}: {text}", exclude=req["conn"])
        return None
    return None


@app.websocket("/sync-room/<name>")
def sync_room(req: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A sync handler (pool thread) using presence: members() blocks and answers."""
    if req["type"] == "ws.connect":
        return {"accept": True, "join": f"room:{name}"}
    if req["type"] == "ws.message":
        return {"send": members(f"room:{name}")}
    return None


@app.websocket("/deny")
def deny(req: dict[str, Any]) -> dict[str, Any]:
    return {"status": 403, "body": "no"}


@app.websocket("/late-join")
def late_join(req: dict[str, Any]) -> dict[str, Any] | None:
    if req["type"] == "ws.connect":
        return {"accept": True}
    if req["type"] == "ws.message" and req["text"]:
        join(req["conn"], req["text"])
        return {"send": "joined"}
    return None


@app.route("/")
def index(req: dict[str, Any]) -> str:
    return "plain http still works\n"


@app.route("/sleep/<float:seconds>")
async def sleep(req: dict[str, Any], seconds: float) -> str:
    """HTTP that takes its time, beside the WebSockets (the drain tests)."""
    await asyncio.sleep(seconds)  # the request's length is what the drain tests use
    return "slept\n"


SLOW_SEEN: list[int] = []


@app.websocket("/slow")
async def slow(req: dict[str, Any]) -> dict[str, Any] | None:
    """Takes 20 ms a message, and never answers: a client cannot outrun it."""
    if req["type"] == "ws.connect":
        return {"accept": True}
    if req["type"] == "ws.message":
        await asyncio.sleep(0.02)  # the handler's simulated work
        SLOW_SEEN.append(len(req["bytes"] or b""))
    return None


@app.route("/slow-seen")
def slow_seen(req: dict[str, Any]) -> int:
    return len(SLOW_SEEN)
