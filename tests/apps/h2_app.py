"""Routes for the HTTP/2 tests, run inside real worker processes (one worker: the
count of slow requests started is this process's own)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from cluster import App

app = App()
_slow_started = 0


@app.route("/echo", methods=["GET", "POST", "HEAD"])
def echo(req: dict[str, Any]) -> dict[str, Any]:
    return {"status": 200, "body": {
        "version": req["version"], "method": req["method"], "path": req["path"],
        "query": req["query"], "host": req["headers"].get("host"),
        "cookie": req["headers"].get("cookie"), "body": len(req["body"])}}


@app.route("/big/<int:size>")
def big(req: dict[str, Any], size: int) -> bytes:
    return b"x" * size


@app.route("/stream/<int:parts>")
def stream(req: dict[str, Any], parts: int) -> dict[str, Any]:
    def chunks() -> Iterator[bytes]:
        for i in range(parts):
            yield bytes([97 + i % 26]) * 16384
    return {"status": 200, "headers": {"content-type": "application/octet-stream"},
            "body": chunks()}


@app.route("/slow")
async def slow(req: dict[str, Any]) -> str:
    global _slow_started
    _slow_started += 1
    await asyncio.sleep(0.5)  # the handler's work, long enough to be reset during it
    return "slow"


@app.route("/slow-started")
def slow_started(req: dict[str, Any]) -> str:
    return str(_slow_started)


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app telling the HTTP version in its scope."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["http_version"].encode()})
