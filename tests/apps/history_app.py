"""A room with history: members subscribe (recovering from ?since=EPOCH:OFFSET);
every message is published with an offset. `app` answers with the handler's reply,
`asgi` is the same room as an ASGI app calling cluster.subscribe."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from cluster import App, broadcast, publish, subscribe

app = App()


@app.websocket("/feed/<room>")
async def feed(req: dict[str, Any], room: str) -> dict[str, Any] | None:
    if req["type"] == "ws.connect":
        if "talk_only" in req["query"]:
            return {"accept": True}  # publishes, reads nothing
        since = req["query"].get("since", "")
        epoch, _, offset = since.partition(":")
        sub: dict[str, Any] = {"group": room}
        if since:
            sub["since"] = [epoch, int(offset) if offset.isdigit() else -1]
        return {"accept": True, "subscribe": sub}
    if req["type"] == "ws.message" and req["text"] == "?":
        # "Are you there?": answered on the same ordered link as the accept and its
        # subscription, so the answer means the subscription is in place.
        return {"send": "!"}
    if req["type"] == "ws.message" and req["text"]:
        if req["query"].get("plain"):  # the benchmark's comparison: no history
            broadcast(room, req["text"])
        else:
            publish(room, req["text"])
    return None


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same room as a plain ASGI app: subscribe() after the accept."""
    if scope["type"] != "websocket":
        return
    room = scope["path"].rsplit("/", 1)[1]
    query = dict(parse_qsl(scope["query_string"].decode()))
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    if "talk_only" not in query:
        epoch, _, offset = query.get("since", "").partition(":")
        since = (epoch, int(offset) if offset.isdigit() else -1) if epoch else None
        subscribe(scope["extensions"]["cluster"]["conn"], room, since)
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "?":  # after subscribe(): its answer means it is in place
            await send({"type": "websocket.send", "text": "!"})
        elif message.get("text"):
            publish(room, message["text"])
