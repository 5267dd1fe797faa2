"""The fault tests' app: the shared-state routes, and a WebSocket room whose members
can ask which worker process serves them."""

from __future__ import annotations

import os
from typing import Any

from cluster import broadcast
from tests.apps.state_app import app


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
