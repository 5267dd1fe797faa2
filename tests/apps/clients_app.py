"""What the client tests talk to: RPC, groups the clients subscribe themselves to
(rooms only), publishing over HTTP, and an event stream (Server-Sent Events)."""

from __future__ import annotations

import asyncio
from typing import Any

from cluster import App, publish, push

app = App()


def rooms_only(req: dict[str, Any], group: str) -> bool:
    return group.startswith("room:")


app.groups(rooms_only)


@app.rpc("room.say")
def say(req: dict[str, Any], group: str, text: str) -> dict[str, Any]:
    publish(group, {"text": text})
    return {"ok": True}


@app.rpc("echo.echo")
def echo(req: dict[str, Any], **data: Any) -> dict[str, Any]:
    return data


@app.rpc("echo.slow")
async def slow(req: dict[str, Any], seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


@app.rpc("echo.whoami")
def whoami(req: dict[str, Any]) -> str:
    return str(req["conn"])


@app.route("/publish", methods=["POST"])
def publish_many(req: dict[str, Any]) -> dict[str, Any]:
    """POST /publish?group=G&first=N&count=K: publish {"n": N..N+K-1} to G, in order."""
    group = req["query"]["group"]
    first, count = int(req["query"].get("first", "1")), int(req["query"].get("count", "1"))
    for n in range(first, first + count):
        publish(group, {"n": n})
    return {"published": count}


@app.route("/push", methods=["POST"])
def push_one(req: dict[str, Any]) -> dict[str, Any]:
    return {"pushed": push(req["query"]["conn"], req["query"]["text"])}
