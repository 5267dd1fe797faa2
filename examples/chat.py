"""A WebSocket chat with rooms and presence, across every gateway and worker.

    cluster run --handler examples.chat:app --gateways 2 --workers 2
    open http://127.0.0.1:8000/ and http://127.0.0.1:8001/ (two gateways): same room,
    each sees the other's messages and who is present.

The page uses the JavaScript client every gateway serves (/_cluster/client.js,
docs/clients.md) on the RPC endpoint /chat: it subscribes itself to `room:<name>`,
calls chat.hello and chat.say, and reconnects by itself. Names live in the shared
state (`name:<conn>`), so any worker can list who is in a room; group membership
lives in the gateways, and `members()` asks all of them. Messages are published with
history: a page that lost its connection (a gateway restarted, the network blinked)
resubscribes with the last (epoch, offset) it saw and gets what it missed, once and
in order (docs/websocket.md). Plain WebSocket clients join the same rooms at
/chat/<room>.
"""

from typing import Any

from cluster import App, broadcast, members, publish

app = App()

PAGE = """<!doctype html>
<meta charset="utf-8"><title>cluster chat</title>
<style>body{font:15px system-ui;margin:2em;max-width:40em}#log{border:1px solid #ccc;
height:20em;overflow:auto;padding:.5em}#who{color:#555}#status{color:#a60}</style>
<h1>cluster chat</h1>
<p>room <input id="room" value="lobby"> name <input id="name" value="guest">
<button id="join">join</button></p>
<p id="who">not connected</p><p id="status"></p><div id="log"></div>
<form id="f"><input id="msg" size="50" autocomplete="off"> <button>send</button></form>
<script type="module">
// The JavaScript client every gateway serves (docs/clients.md): it reconnects by
// itself, and resubscribes with the last message it saw, so nothing is missed twice.
import { connect } from "/_cluster/client.js";
const $ = (id) => document.getElementById(id);
const log = (t) => { const p = document.createElement("div"); p.textContent = t;
  const l = $("log"); l.appendChild(p); l.scrollTop = 1e9; };
const client = connect("/chat");
let room = null;
client.on("state", ({ state, code, attempt, delay }) => {
  if (state === "open") {
    $("status").textContent = "connected";
    if (attempt > 0) log(`(reconnected after ${attempt} attempts)`);
    if (room) client.call("chat", "hello", { room, name: $("name").value });
  } else if (state === "reconnecting") {
    $("who").textContent = "not connected";
    if (attempt === 1) log(`(closed ${code}; reconnecting)`);
    $("status").textContent =
      `reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${attempt})`;
  }
});
client.on("message", (m) => {  // presence, broadcast to the room
  if (m.type === "presence" && m.room === room)
    $("who").textContent = `${m.count} here: ${m.names.join(", ")}`;
});
$("join").onclick = () => {
  if (room) client.unsubscribe(`room:${room}`);
  room = $("room").value;
  client.subscribe(`room:${room}`, {
    onMessage: (m) => log(`${m.data.name}: ${m.data.text}`),
    onRecovered: () => log("(back: what was missed follows)"),
    onGap: () => log("(some messages were missed: too long away)"),
  });
  client.call("chat", "hello", { room, name: $("name").value });
};
$("f").onsubmit = (e) => { e.preventDefault();
  const i = $("msg");
  if (room && i.value) client.call("chat", "say", { room, text: i.value });
  i.value = ""; };
</script>
"""


@app.route("/")
def page(req: dict[str, Any]) -> dict[str, Any]:
    return {"status": 200, "headers": {"content-type": "text/html; charset=utf-8"},
            "body": PAGE}


async def presence(state: Any, room: str) -> dict[str, Any]:
    who = await members(f"room:{room}")
    names = sorted(str(state.get(f"name:{conn}", "?")) for conn in who["conns"])
    return {"type": "presence", "room": room, "count": who["count"], "names": names}


# The page's endpoint: the JavaScript client's RPC and group subscription (rooms only).
app.groups(lambda req, group: group.startswith("room:"), path="/chat")


@app.rpc("chat.hello", path="/chat")
async def hello(req: dict[str, Any], room: str, name: str) -> None:
    """Sent after each (re)connect and join: who I am, then the room's presence."""
    state, conn = req["state"], req["conn"]
    await state.aset(f"name:{conn}", str(name)[:40])
    await state.aset(f"room:{conn}", str(room)[:100])
    broadcast(f"room:{room}", await presence(state, str(room)))


@app.rpc("chat.say", path="/chat")
async def say(req: dict[str, Any], room: str, text: str) -> None:
    name = req["state"].get(f"name:{req['conn']}", "guest")
    publish(f"room:{room}", {"type": "message", "name": name, "text": str(text)[:2000]})


@app.rpc_closed(path="/chat")
async def gone(req: dict[str, Any]) -> None:
    """Forget the name; tell the room who is left."""
    state, conn = req["state"], req["conn"]
    room = state.get(f"room:{conn}")
    await state.adelete(f"name:{conn}")
    await state.adelete(f"room:{conn}")
    if room is not None:
        broadcast(f"room:{room}", await presence(state, room))


@app.websocket("/chat/<room>")
async def chat(req: dict[str, Any], room: str) -> dict[str, Any] | None:
    """The same rooms for plain WebSocket clients (wscat, the load test): text in,
    JSON out; `?since=EPOCH:OFFSET` resumes after the last message seen."""
    state, conn, group = req["state"], req["conn"], f"room:{room}"
    name = req["query"].get("name", "guest")[:40]
    if req["type"] == "ws.connect":
        await state.aset(f"name:{conn}", name)
        epoch, _, offset = req["query"].get("since", "").partition(":")
        if epoch and offset.isdigit():  # a reconnect: what it missed, then live
            return {"accept": True, "subscribe": {"group": group,
                                                  "since": [epoch, int(offset)]}}
        return {"accept": True, "subscribe": {"group": group}}
    if req["type"] == "ws.message":
        text = (req["text"] or "")[:2000]
        if text == "/hello":  # sent on open, once our join is in place at the gateway
            broadcast(group, await presence(state, room))
            return None
        publish(group, {"type": "message", "name": state.get(f"name:{conn}", name),
                        "text": text})
        return None
    # ws.close: forget the name, tell the room who is left
    await state.adelete(f"name:{conn}")
    broadcast(group, await presence(state, room))
    return None
