"""A room with history: members subscribe (recovering from ?since=EPOCH:OFFSET);
every message is published with an offset."""

from __future__ import annotations

from typing import Any

from cluster import App, broadcast, publish

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
    if req["type"] == "ws.message" and req["text"]:
        if req["query"].get("plain"):  # the benchmark's comparison: no history
            broadcast(room, req["text"])
        else:
            publish(room, req["text"])
    return None
