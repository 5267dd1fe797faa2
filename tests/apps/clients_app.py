"""What the client tests talk to: RPC, groups the clients subscribe themselves to
(rooms only), publishing over HTTP, and an event stream (Server-Sent Events)."""

from __future__ import annotations

import asyncio
from typing import Any

from cluster import App, broadcast, event_stream, publish, push

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
    await asyncio.sleep(seconds)  # the duration is the point: a call that outlasts a timeout
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


@app.route("/events")
def events(req: dict[str, Any]) -> dict[str, Any]:
    """A stream of the room's published messages (resuming after Last-Event-ID) and of
    everything broadcast to "everyone"; ?refuse=1 answers 403 instead."""
    if req["query"].get("refuse"):
        return {"status": 403, "body": "no"}
    if req["query"].get("bad"):  # a stream cannot have another status: the handler failed
        return {"status": 404, "events": {"join": "everyone"}}
    return event_stream(subscribe=req["query"].get("group", "room:sse"), join="everyone",
                        retry=int(req["query"].get("retry", "500")),
                        headers={"x-conn": req["conn"]})


@app.route("/broadcast", methods=["POST"])
def broadcast_one(req: dict[str, Any]) -> dict[str, Any]:
    broadcast(req["query"]["group"], req["query"].get("text") or req["body"].decode())
    return {"ok": True}


PAGE = """<!doctype html>
<meta charset="utf-8"><title>events</title>
<p id="state">connecting</p><ol id="log"></ol>
<script>
// An EventSource, as docs/clients.md shows it: the browser reconnects by itself and
// sends the last id it saw, from which the stream resumes.
const source = new EventSource("/events?group=room:page");
const seen = [];  // payloads, and offsets (two workers may number batches in either order)
const offsets = [];
source.onopen = () => { document.getElementById("state").textContent = "open"; };
source.onerror = () => { document.getElementById("state").textContent = "reconnecting"; };
source.onmessage = (e) => {
  const m = JSON.parse(e.data);
  if ("offset" in m) {
    seen.push(m.data.n);
    offsets.push(m.offset);
    const li = document.createElement("li");
    li.textContent = m.data.n;
    document.getElementById("log").appendChild(li);
  } else if ("recovered" in m && !m.recovered && m.epoch) {
    document.getElementById("state").textContent = "gap";
  }
};
window.seen = seen;
window.offsets = offsets;
</script>
"""


@app.route("/sse-page")
def sse_page(req: dict[str, Any]) -> dict[str, Any]:
    return {"headers": {"content-type": "text/html; charset=utf-8"}, "body": PAGE}


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same stream from a plain ASGI app, through the cluster extension."""
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/events":
        await send({"type": "cluster.event_stream", "subscribe": "room:asgi",
                    "join": ["everyone"], "retry": 500,
                    "headers": [(b"x-conn", scope["extensions"]["cluster"]["conn"].encode())]})
        return
    publish("room:asgi", {"n": 1})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"published"})


def events_fun(req: dict[str, Any], state: Any) -> dict[str, Any]:
    """A plain dict function (no App) answering every request with an event stream of
    the room in ?group=, or publishing to it on POST."""
    group = req["query"].get("group", "room:fun")
    if req["method"] == "POST":
        publish(group, {"n": int(req["query"].get("n", "1"))})
        return {"status": 200, "body": "published"}
    return {"events": {"subscribe": group}, "headers": {"x-conn": req["conn"]}}
