"""The fault tests' app: the shared-state routes, a WebSocket room whose members
can ask which worker process serves them, and the history app's feed (`/feed/ROOM`,
published with offsets)."""

from __future__ import annotations

import os
from typing import Any

from cluster import broadcast
from tests.apps.history_app import feed
from tests.apps.state_app import app

app.websocket("/feed/<room>")(feed)


@app.websocket("/room/<name>")
async def room(req: dict[str, Any], name: str) -> dict[str, Any] | None:
    group = f"room:{name}"
    if req["type"] == "ws.connect":
        return {"accept": True, "join": group}
    if req["type"] == "ws.message":
        if req["text"] == "whoami":
            return {"send": str(os.getpid())}
        broadcast(group, req["text"], exclude=req["conn"])
    return None
