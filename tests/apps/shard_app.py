"""Rooms sharded by name: every connection of a room is handled by one worker, and
the room's messages run there one at a time, in arrival order.

Each message is numbered by a counter the worker keeps in its own memory, read and
written across an `await`: were two of a room's messages handled at once (or on two
workers), numbers would repeat. Members get {"n", "pid", "from", "text"} as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from cluster import App, broadcast

app = App()
_counts: dict[str, int] = {}  # room -> messages numbered here


@app.websocket("/shard/<name>")
async def room(req: dict[str, Any], name: str) -> dict[str, Any] | None:
    group = f"shard:{name}"
    if req["type"] == "ws.connect":
        return {"accept": True, "shard": f"room:{name}", "join": group}
    if req["type"] == "ws.message":
        if req["text"] == "whoami":
            return {"send": {"pid": os.getpid(), "shard": req.get("shard")}}
        n = _counts.get(name, 0)
        await asyncio.sleep(0.005)  # the work; anything else the worker holds runs meanwhile
        _counts[name] = n + 1
        broadcast(group, json.dumps({"n": n + 1, "pid": os.getpid(), "from": req["conn"],
                                     "text": req["text"]}))
    return None
