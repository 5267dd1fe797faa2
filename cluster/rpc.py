"""WebSocket RPC (seed WsAppy): JSON requests to named methods, JSON answers.

    app = App()

    @app.rpc("entity.get")                       # clients connect to /rpc
    def get(req, item_id):
        return {"items": [...]}

    class Users:                                 # a handler class: every public method
        def find(self, req, name): ...
        async def rename(self, req, old, new): ...
    app.rpc_handler("users", Users(), path="/api")   # users.find, users.rename on /api

A client sends `{"module": "entity", "method": "get", "data": {"item_id": 42},
"request_id": 1}` and gets `{"request_id": 1, "event": "result", "module":
"entity", "data": {...}}`. Whatever goes wrong is answered, never dropped: a message
that is not JSON, lacks `request_id` or names no method, bad arguments, a handler
that raises, all get `"event": "error"` with `data: {"error": KIND, "message": ...}`
and the connection stays open. Calls on one connection run one at a time, in order;
sync methods run in a thread. `req` is the WebSocket event (conn, state, headers),
so methods can push, join groups and use the shared state.

`GroupMethods` are the methods the clients in clients/ and `cluster.client` use to
subscribe themselves to groups (`cluster.subscribe`, `cluster.unsubscribe`,
`cluster.presence`), each asked of the application's `allow(req, group)` first;
`App.groups` puts them on an endpoint.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cluster import realtime
from cluster.errors import BadRpcArgument, GroupRefused

log = logging.getLogger("cluster.rpc")

MAX_MESSAGE = 1024 * 1024  # characters of one request; bigger is refused with an error


class RpcEndpoint:
    """The methods reachable on one WebSocket path, and the view that serves them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.methods: dict[str, Callable[..., Any]] = {}
        # Called with the ws.close event when a connection ends (App.rpc_closed).
        self.on_close: list[Callable[[dict[str, Any]], Any]] = []

    def add(self, name: str, fn: Callable[..., Any]) -> None:
        module, dot, method = name.partition(".")
        if not module or not dot or not method:
            raise ValueError(f"RPC name {name!r} must look like module.method")
        if name in self.methods:
            raise ValueError(f"RPC {name!r} is registered twice on {self.path}")
        self.methods[name] = fn

    async def view(self, req: dict[str, Any], **_params: Any) -> dict[str, Any] | None:
        if req["type"] == "ws.connect":
            return {"accept": True}
        if req["type"] == "ws.close":
            for callback in self.on_close:
                try:
                    result = callback(req)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("RPC close callback on %s raised", self.path)
            return None
        if req["type"] != "ws.message":
            return None
        return {"send": json.dumps(await self.answer(req), default=str)}

    async def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        text = req.get("text")
        if text is None:
            return error(None, None, "bad_request", "send JSON text, not binary")
        if len(text) > MAX_MESSAGE:
            return error(None, None, "bad_request", "message too large")
        try:
            call = json.loads(text)
        except ValueError as exc:
            log.info("RPC: a message that is not JSON (%s)", exc)
            return error(None, None, "bad_request", "not JSON")
        if not isinstance(call, dict):
            return error(None, None, "bad_request", "a request is a JSON object")
        request_id = call.get("request_id")
        module, method = call.get("module"), call.get("method")
        if request_id is None or isinstance(request_id, (dict, list)):
            return error(None, module, "bad_request", "request_id is missing")
        if not isinstance(module, str) or not isinstance(method, str):
            return error(request_id, module, "bad_request", "module and method are strings")
        fn = self.methods.get(f"{module}.{method}")
        if fn is None:
            return error(request_id, module, "not_found", f"no method {module}.{method}")
        data = call.get("data", {})
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return error(request_id, module, "bad_request", "data is a JSON object")
        try:
            inspect.signature(fn).bind(req, **data)
        except TypeError as exc:
            log.info("RPC %s.%s (request %r): %s", module, method, request_id, exc)
            return error(request_id, module, "bad_request",
                         f"data does not match the parameters of {module}.{method}")
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(req, **data)
            else:
                result = await asyncio.to_thread(fn, req, **data)
        except GroupRefused as exc:
            log.info("RPC %s.%s (request %r): group %r refused", module, method,
                     request_id, str(exc)[:200])
            return error(request_id, module, "forbidden", f"not allowed: {str(exc)[:200]}")
        except BadRpcArgument as exc:
            return error(request_id, module, "bad_request", str(exc))
        except Exception:
            log.exception("RPC %s.%s (request %r) raised", module, method, request_id)
            return error(request_id, module, "internal", "the method failed")
        return {"request_id": request_id, "event": "result", "module": module,
                "data": result}


def error(request_id: Any, module: Any, kind: str, message: str) -> dict[str, Any]:
    return {"request_id": request_id, "event": "error",
            "module": module if isinstance(module, str) else None,
            "data": {"error": kind, "message": message}}


def public_methods(handler: object) -> dict[str, Callable[..., Any]]:
    """A handler object's methods that RPC exposes: callables not starting with '_'."""
    return {name: getattr(handler, name) for name in dir(handler)
            if not name.startswith("_") and callable(getattr(handler, name))}


Allow = Callable[[dict[str, Any], str], "bool | Awaitable[bool]"]


class GroupMethods:
    """Subscription by the client itself, for the groups `allow(req, group)` admits
    (sync or async; True lets the connection in). Published messages and recovery
    are those of docs/websocket.md: `since` is the [epoch, offset] last seen."""

    MODULE = "cluster"  # the methods are cluster.subscribe, .unsubscribe, .presence

    def __init__(self, allow: Allow) -> None:
        self.allow = allow

    async def _check(self, req: dict[str, Any], group: Any) -> str:
        if not isinstance(group, str) or not group or len(group) > 200:
            raise BadRpcArgument("group is a non-empty string of at most 200 characters")
        verdict = self.allow(req, group)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is not True:
            raise GroupRefused(group)
        return group

    async def subscribe(self, req: dict[str, Any], group: str,
                        since: list[Any] | None = None) -> dict[str, Any]:
        group = await self._check(req, group)
        if since is not None and not (
                isinstance(since, list) and len(since) == 2 and isinstance(since[0], str)
                and type(since[1]) is int and since[1] >= 0):
            raise BadRpcArgument("since is [epoch, offset], or null")
        realtime.subscribe(req["conn"], group, since)
        return {"group": group}

    async def unsubscribe(self, req: dict[str, Any], group: str) -> dict[str, Any]:
        group = await self._check(req, group)
        realtime.leave(req["conn"], group)
        return {"group": group}

    async def presence(self, req: dict[str, Any], group: str) -> dict[str, Any]:
        group = await self._check(req, group)
        who: dict[str, Any] = await realtime.members(group)
        return {"group": group, **who}
