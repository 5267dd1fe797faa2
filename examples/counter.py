"""Shared state over HTTP (seed Asynsrv's shared dict, across every worker).

    cluster run --handler examples.counter:app --workers 3
    curl -X POST http://127.0.0.1:8000/counter          # atomic +1, any worker
    curl http://127.0.0.1:8000/counter
    curl -X PUT -d 'blue' http://127.0.0.1:8000/map/color
    curl http://127.0.0.1:8000/map
"""

from typing import Any

from cluster import App

app = App()


@app.route("/counter", methods=["GET", "POST"])
def counter(req: dict[str, Any]) -> dict[str, Any]:
    state = req["state"]
    if req["method"] == "POST":
        n = int(req["query"].get("by", "1"))
        return {"status": 200, "body": {"counter": state.incr("counter", n),
                                        "worker": state["WORKER"]}}
    return {"status": 200, "body": {"counter": state.get("counter", 0)}}


@app.route("/map")
def whole_map(req: dict[str, Any]) -> dict[str, Any]:
    state = req["state"]
    return {"status": 200, "body": {k[4:]: state[k] for k in state if k.startswith("map:")}}


@app.route("/map/<key>", methods=["GET", "PUT", "DELETE"])
def map_entry(req: dict[str, Any], key: str) -> dict[str, Any]:
    state = req["state"]
    name = f"map:{key}"
    if req["method"] == "PUT":
        state[name] = req["body"].decode("utf-8", "replace")  # committed on return
        return {"status": 200, "body": {key: state[name]}}  # reads its own write
    if req["method"] == "DELETE":
        return {"status": 200 if state.delete(name) else 404, "body": ""}
    if name not in state:
        return {"status": 404, "body": {"error": f"no {key}"}}
    return {"status": 200, "body": {key: state[name]}}
