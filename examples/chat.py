"""A WebSocket chat with rooms and presence, across every gateway and worker.

    cluster run --handler examples.chat:app --gateways 2 --workers 2
    open http://127.0.0.1:8000/ and http://127.0.0.1:8001/ (two gateways): same room,
    each sees the other's messages and who is present.

Names live in the shared state (`name:<conn>`), so any worker can list who is in a
room; group membership lives in the gateways, and `members()` asks all of them.
Messages are published with history: a page that lost its connection (a gateway
restarted, the network blinked) reconnects with the last (epoch, offset) it saw and
gets what it missed, once and in order (docs/websocket.md).
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
<script>
// One connection at a time. When it drops (a gateway restarts, the network blinks),
// reconnect by ourselves after a pause that doubles from 0.5 s up to 8 s, with some
// jitter so a whole room does not come back at the same instant; say so on the page.
let ws = null, wanted = false, attempt = 0, timer = null, since = "";
const $ = (id) => document.getElementById(id);
const log = (t) => { const p = document.createElement("div"); p.textContent = t;
  const l = $("log"); l.appendChild(p); l.scrollTop = 1e9; };
const status = (t) => { $("status").textContent = t; };
function connect() {
  const room = encodeURIComponent($("room").value);
  const name = encodeURIComponent($("name").value);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const resume = since ? `&since=${encodeURIComponent(since)}` : "";
  ws = new WebSocket(`${scheme}://${location.host}/chat/${room}?name=${name}${resume}`);
  ws.onmessage = (e) => { const m = JSON.parse(e.data);
    if (m.type === "presence") $("who").textContent = `${m.count} here: ${m.names.join(", ")}`;
    else if ("recovered" in m) log(m.recovered ? "(caught up)" :
                                   "(some messages were missed: too long away)");
    else if ("offset" in m) { since = `${m.epoch}:${m.offset}`;
                              log(`${m.data.name}: ${m.data.text}`); } };
  ws.onopen = () => {
    if (attempt > 0) { log(`(reconnected after ${attempt} attempts)`); }
    status("connected"); attempt = 0; ws.send("/hello"); };
  ws.onclose = (e) => {
    $("who").textContent = "not connected";
    if (!wanted) { status("disconnected"); return; }
    attempt += 1;
    const pause = Math.min(8000, 500 * 2 ** (attempt - 1)) * (0.75 + Math.random() / 2);
    log(`(closed ${e.code}; reconnecting)`);
    status(`reconnecting in ${(pause / 1000).toFixed(1)} s (attempt ${attempt})`);
    timer = setTimeout(connect, pause);
  };
}
$("join").onclick = () => {
  clearTimeout(timer); since = "";
  if (ws) { ws.onclose = null; ws.close(); }  // the old room's: no reconnect for it
  wanted = true; attempt = 0; connect();
};
$("f").onsubmit = (e) => { e.preventDefault();
  const i = $("msg"); if (ws && ws.readyState === 1 && i.value) ws.send(i.value);
  i.value = ""; };
</script>
"""


@app.route("/")
def page(req: dict[str, Any]) -> dict[str, Any]:
    return {"status": 200, "headers": {"content-type": "text/html; charset=utf-8"},
            "body": PAGE}


async def presence(state: Any, group: str) -> dict[str, Any]:
    who = await members(group)
    names = sorted(str(state.get(f"name:{conn}", "?")) for conn in who["conns"])
    return {"type": "presence", "count": who["count"], "names": names}


@app.websocket("/chat/<room>")
async def chat(req: dict[str, Any], room: str) -> dict[str, Any] | None:
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
            broadcast(group, await presence(state, group))
            return None
        publish(group, {"type": "message", "name": state.get(f"name:{conn}", name),
                        "text": text})
        return None
    # ws.close: forget the name, tell the room who is left
    await state.adelete(f"name:{conn}")
    broadcast(group, await presence(state, group))
    return None
