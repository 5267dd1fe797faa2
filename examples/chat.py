"""A WebSocket chat with rooms and presence, across every gateway and worker.

    cluster run --handler examples.chat:app --gateways 2 --workers 2
    open http://127.0.0.1:8000/ and http://127.0.0.1:8001/ (two gateways): same room,
    each sees the other's messages and who is present.

Names live in the shared state (`name:<conn>`), so any worker can list who is in a
room; group membership lives in the gateways, and `members()` asks all of them.
"""

from typing import Any

from cluster import App, broadcast, members

app = App()

PAGE = """<!doctype html>
<meta charset="utf-8"><title>cluster chat</title>
<style>body{font:15px system-ui;margin:2em;max-width:40em}#log{border:1px solid #ccc;
height:20em;overflow:auto;padding:.5em}#who{color:#555}</style>
<h1>cluster chat</h1>
<p>room <input id="room" value="lobby"> name <input id="name" value="guest">
<button id="join">join</button></p>
<p id="who">not connected</p><div id="log"></div>
<form id="f"><input id="msg" size="50" autocomplete="off"> <button>send</button></form>
<script>
let ws;
const log = (t) => { const p = document.createElement("div"); p.textContent = t;
  const l = document.getElementById("log"); l.appendChild(p); l.scrollTop = 1e9; };
document.getElementById("join").onclick = () => {
  if (ws) ws.close();
  const room = encodeURIComponent(document.getElementById("room").value);
  const name = encodeURIComponent(document.getElementById("name").value);
  ws = new WebSocket(`ws://${location.host}/chat/${room}?name=${name}`);
  ws.onmessage = (e) => { const m = JSON.parse(e.data);
    if (m.type === "presence") document.getElementById("who").textContent =
      `${m.count} here: ${m.names.join(", ")}`;
    else log(`${m.name}: ${m.text}`); };
  ws.onopen = () => ws.send("/hello");
  ws.onclose = (e) => log(`(closed ${e.code})`);
};
document.getElementById("f").onsubmit = (e) => { e.preventDefault();
  const i = document.getElementById("msg"); if (ws && i.value) ws.send(i.value);
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
        return {"accept": True, "join": group}
    if req["type"] == "ws.message":
        text = (req["text"] or "")[:2000]
        if text == "/hello":  # sent on open, once our join is in place at the gateway
            broadcast(group, await presence(state, group))
            return None
        broadcast(group, {"type": "message", "name": state.get(f"name:{conn}", name),
                          "text": text})
        return None
    # ws.close: forget the name, tell the room who is left
    await state.adelete(f"name:{conn}")
    broadcast(group, await presence(state, group))
    return None
