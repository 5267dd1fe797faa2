"""An `App` with routes (seed Homor): typed parameters, methods, a custom 404.

    cluster run --handler examples.routes:app
    cluster routes examples.routes:app
"""

import asyncio
from collections.abc import Iterator
from typing import Any

from cluster import App

app = App()
items: dict[int, Any] = {}  # worker-local; shared state is its own feature


@app.route("/")
def index(req: dict[str, Any]) -> str:
    return "routes example: try /hello/you, /items/1, /stream\n"


@app.route("/hello/<name>")
def hello(req: dict[str, Any], name: str) -> dict[str, Any]:
    return {"status": 200, "body": {"hello": name, "query": req["query"]}}


@app.route("/items/<int:item_id>", methods=["GET", "PUT", "DELETE"])
def item(req: dict[str, Any], item_id: int) -> dict[str, Any]:
    if req["method"] == "PUT":
        items[item_id] = req["body"].decode("utf-8", "replace")
        return {"status": 201, "body": {"id": item_id, "value": items[item_id]}}
    if req["method"] == "DELETE":
        return {"status": 204 if items.pop(item_id, None) is not None else 404}
    if item_id not in items:
        return {"status": 404, "body": {"error": f"no item {item_id}"}}
    return {"status": 200, "body": {"id": item_id, "value": items[item_id]}}


@app.route("/files/<path:rest>")
async def files(req: dict[str, Any], rest: str) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"status": 200, "body": {"path": rest}}


@app.route("/stream")
def stream(req: dict[str, Any]) -> dict[str, Any]:
    def parts() -> Iterator[str]:
        for i in range(3):
            yield f"part {i}\n"
    return {"status": 200, "headers": {"content-type": "text/plain"}, "body": parts()}


@app.not_found
def missing(req: dict[str, Any]) -> dict[str, Any]:
    return {"status": 404, "body": {"error": "not found", "path": req["path"]}}
