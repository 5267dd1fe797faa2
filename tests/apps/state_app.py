"""Handlers for the shared-state tests, run inside real worker processes."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from cluster import App
from cluster.errors import StateError

app = App()


@app.route("/incr", methods=["POST"])
def incr(req: dict[str, Any]) -> dict[str, Any]:
    return {"status": 200, "body": {"n": req["state"].incr("hits")}}


@app.route("/pair/<int:n>", methods=["PUT", "GET"])
def pair(req: dict[str, Any], n: int) -> dict[str, Any]:
    """PUT writes two keys in one batch: after any crash, both or neither."""
    state = req["state"]
    if req["method"] == "PUT":
        state[f"a{n}"] = n
        state[f"b{n}"] = n
        return {"status": 200, "body": "ok"}
    return {"status": 200, "body": {"a": state.get(f"a{n}"), "b": state.get(f"b{n}")}}


@app.route("/pairs")
def pairs(req: dict[str, Any]) -> dict[str, Any]:
    state = req["state"]
    a = sorted(int(k[1:]) for k in state if k.startswith("a"))
    b = sorted(int(k[1:]) for k in state if k.startswith("b"))
    return {"status": 200, "body": {"a": a, "b": b}}


@app.route("/bulk/<int:start>/<int:count>", methods=["PUT"])
def bulk(req: dict[str, Any], start: int, count: int) -> dict[str, Any]:
    state = req["state"]
    for i in range(start, start + count):
        state[f"key{i:06d}"] = i
    return {"status": 200, "body": "ok"}


@app.route("/count")
def count(req: dict[str, Any]) -> dict[str, Any]:
    return {"status": 200, "body": {"keys": len(req["state"]), "pid": os.getpid()}}


@app.route("/kv/<key>", methods=["GET", "PUT", "DELETE"])
async def kv(req: dict[str, Any], key: str) -> dict[str, Any]:
    state = req["state"]
    try:
        if req["method"] == "PUT":
            ttl = req["query"].get("ttl")
            await state.aset(key, req["body"].decode(), ttl=float(ttl) if ttl else None)
            return {"status": 200, "body": {"pid": os.getpid()}}
        if req["method"] == "DELETE":
            return {"status": 200, "body": {"deleted": await state.adelete(key)}}
    except StateError as exc:
        if type(exc).__name__ == "StateUnavailable":
            raise
        return {"status": 400, "body": {"error": str(exc)}}
    if key not in state:
        return {"status": 404, "body": {"pid": os.getpid()}}
    return {"status": 200, "body": {"value": state[key], "pid": os.getpid()}}


@app.route("/together/<counter>/<other>", methods=["POST"])
async def together(req: dict[str, Any], counter: str, other: str) -> dict[str, Any]:
    """Two increments made in one turn of the worker's loop: each stands or fails on
    its own (`other` may hold something that is not a number)."""
    state = req["state"]
    counted, second = await asyncio.gather(state.aincr(counter), state.aincr(other),
                                           return_exceptions=True)
    if isinstance(counted, BaseException):
        raise counted
    return {"status": 200, "body": {"counted": counted,
                                    "other": second if isinstance(second, int) else None,
                                    "refused": str(second) if isinstance(second, StateError)
                                    else None}}


@app.route("/readonly", methods=["PUT"])
def readonly(req: dict[str, Any]) -> dict[str, Any]:
    req["state"]["WORKER"] = "me"
    return {"status": 200}


@app.route("/whoami")
def whoami(req: dict[str, Any]) -> dict[str, Any]:
    state = req["state"]
    return {"status": 200, "body": {"worker": state["WORKER"], "workers": state["WORKERS"],
                                    "gateways": state["GATEWAYS"]}}


def seed_fun(req: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The seed's style: read, then return a new dict with changes."""
    new = dict(state)
    new["visits"] = state.get("visits", 0) + 1
    return {"status": 200, "body": {"visits": new["visits"]}}, new


@app.route("/kv-keys")
def kv_keys(req: dict[str, Any]) -> dict[str, Any]:
    """The handlers' keys (the framework's are upper case), sorted."""
    return {"status": 200, "body": sorted(k for k in req["state"] if not k.isupper())}
