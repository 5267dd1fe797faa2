"""Handlers the integration tests run inside real worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from cluster import App, redirect

app = App()
_lock = threading.Lock()
_running = 0
_peak = 0


def echo(req: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A plain seed-style function that tells everything it was given."""
    data = {k: req[k] for k in ("id", "conn", "method", "target", "path", "query",
                                "version", "headers")}
    data["addr"] = list(req["addr"])
    data["body"] = req["body"].decode("latin-1")
    data["worker"] = state["WORKER"]
    data["pid"] = os.getpid()
    state["calls"] = state.get("calls", 0) + 1
    data["calls"] = state["calls"]
    return {"status": 200, "headers": {"x-worker": state["WORKER"]}, "body": data}, state


async def async_echo(req: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0)  # a handler's own await, not a test wait
    return {"status": 200, "body": {"path": req["path"], "async": True}}


@app.route("/")
def index(req: dict[str, Any]) -> str:
    return "index\n"


@app.route("/pid")
def pid(req: dict[str, Any]) -> dict[str, Any]:
    return {"status": 200, "headers": {"x-pid": str(os.getpid())}, "body": str(os.getpid())}


@app.route("/sleep/<float:seconds>", methods=["GET", "POST"])
def sleep(req: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Blocks its thread; reports how many ran at once in this worker at the peak.
    With ?mark=PATH it creates PATH once it runs, so a test can wait for that."""
    global _running, _peak
    mark = req["query"].get("mark")
    if mark:
        with open(mark, "a") as f:
            f.write(f"{os.getpid()}\n")
    with _lock:
        _running += 1
        _peak = max(_peak, _running)
    try:
        time.sleep(seconds)  # the handler's simulated work, not a test wait
    finally:
        with _lock:
            _running -= 1
    return {"status": 200, "headers": {"x-pid": str(os.getpid())},
            "body": {"slept": seconds, "peak": _peak, "pid": os.getpid()}}


@app.route("/asleep/<float:seconds>")
async def asleep(req: dict[str, Any], seconds: float) -> dict[str, Any]:
    await asyncio.sleep(seconds)  # the handler's simulated work, not a test wait
    return {"status": 200, "body": {"slept": seconds, "pid": os.getpid()}}


@app.route("/items/<int:item_id>", methods=["GET", "PUT"])
def item(req: dict[str, Any], item_id: int) -> dict[str, Any]:
    return {"status": 200, "body": {"id": item_id, "method": req["method"],
                                    "body": req["body"].decode()}}


@app.route("/files/<path:rest>")
def files(req: dict[str, Any], rest: str) -> str:
    return rest


@app.route("/boom")
def boom(req: dict[str, Any]) -> str:
    raise RuntimeError("secret detail that must not reach the client")


@app.route("/bad-status")
def bad_status(req: dict[str, Any]) -> dict[str, Any]:
    return {"status": "teapot"}


@app.route("/split-header")
def split_header(req: dict[str, Any]) -> dict[str, Any]:
    return {"status": 200, "headers": {"x-evil": "a\r\nset-cookie: b"}, "body": "x"}


@app.route("/bytes")
def raw_bytes(req: dict[str, Any]) -> bytes:
    return b"\x00\x01\x02"


@app.route("/json")
def as_json(req: dict[str, Any]) -> list[int]:
    return [1, 2, 3]


@app.route("/nothing")
def nothing(req: dict[str, Any]) -> None:
    return None


@app.route("/stream")
def stream(req: dict[str, Any]) -> dict[str, Any]:
    def parts() -> Iterator[str]:
        for i in range(3):
            yield f"part {i}\n"
    return {"status": 200, "headers": {"content-type": "text/plain"}, "body": parts()}


@app.route("/astream")
async def astream(req: dict[str, Any]) -> dict[str, Any]:
    async def parts() -> AsyncIterator[bytes]:
        for i in range(3):
            await asyncio.sleep(0.01)  # a slow stream, on purpose
            yield f"apart {i}\n".encode()
    return {"status": 200, "body": parts()}


@app.route("/stream-fails")
def stream_fails(req: dict[str, Any]) -> dict[str, Any]:
    def parts() -> Iterator[bytes]:
        yield b"first\n"
        raise RuntimeError("stream broke")
    return {"status": 200, "body": parts()}


@app.route("/big/<int:size>")
def big(req: dict[str, Any], size: int) -> bytes:
    return b"x" * size


@app.route("/post-only", methods=["POST"])
def post_only(req: dict[str, Any]) -> str:
    return "posted"


@app.not_found
def missing(req: dict[str, Any]) -> dict[str, Any]:
    return {"status": 404, "body": {"missing": req["path"]}}


not_a_handler = 42


def three_args(a: Any, b: Any, c: Any) -> None:
    """Shaped like ASGI but not a coroutine function: refused."""


def as_json_text(obj: Any) -> str:
    return json.dumps(obj)


@app.route("/cookies")
def cookies(req: dict[str, Any]) -> dict[str, Any]:
    return {"body": {"got": req["cookies"]},
            "cookies": {"seen": {"value": "yes", "httponly": True, "path": "/"}}}


@app.route("/go")
def go(req: dict[str, Any]) -> dict[str, Any]:
    return redirect("/items/1", 303)


@app.route("/text/<int:size>")
def text(req: dict[str, Any], size: int) -> dict[str, Any]:
    return {"headers": {"content-type": "text/plain"}, "body": "a" * size}


STREAM_EVENTS: list[str] = []  # what the big streams saw (one worker per test)
MIB = 1024 * 1024


@app.route("/huge/<int:mib>")
def huge(req: dict[str, Any], mib: int) -> dict[str, Any]:
    def parts() -> Iterator[bytes]:
        sent = 0
        try:
            for _ in range(mib * 16):
                yield b"x" * (MIB // 16)
                sent += 1
            STREAM_EVENTS.append("sync finished")
        finally:
            if sent < mib * 16:
                STREAM_EVENTS.append("sync stopped early")
    return {"headers": {"content-type": "application/octet-stream"}, "body": parts()}


@app.route("/ahuge/<int:mib>")
async def ahuge(req: dict[str, Any], mib: int) -> dict[str, Any]:
    async def parts() -> AsyncIterator[bytes]:
        sent = 0
        try:
            for _ in range(mib * 16):
                yield b"y" * (MIB // 16)
                sent += 1
            STREAM_EVENTS.append("async finished")
        finally:
            if sent < mib * 16:
                STREAM_EVENTS.append("async stopped early")
    return {"headers": {"content-type": "application/octet-stream"}, "body": parts()}


@app.route("/stream-events")
def stream_events(req: dict[str, Any]) -> list[str]:
    return STREAM_EVENTS


@app.route("/flask/<int:status>")
def flask_style(req: dict[str, Any], status: int) -> Any:
    """Flask's tuples: (body, status) and (body, status, headers); anything else is 500."""
    if status == 0:
        return ("too", "many", "items", "here")
    return ("made", status, {"X-Flask": "yes"}) if status == 201 else ("hello", status)
