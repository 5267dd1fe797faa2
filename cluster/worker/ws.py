"""WebSocket events in a worker: in order per connection, answered with actions.

Every event of a connection arrives here (the gateway hashes connections to
workers), and they run one after another per connection, so a handler sees a
connection's messages in the order the client sent them. The handler gets a
request dict with `type` ws.connect / ws.message / ws.close and answers with a
dict; `reply_actions` turns that into gateway actions:

    ws.connect: {'accept': True, 'subprotocol': 'chat', 'headers': {...}}
                or {'status': 403} / None: refused
                'shard': key  with the accept: every later event of the connection
                runs on the key's worker, in one queue with the key's other
                connections (all of a room's messages in arrival order)
    any event:  'send': data or [data, ...]       to this connection
                'join' / 'leave': group or [group, ...]
                'broadcast': {group: data, ...}    to every member, every gateway
                'close': code or [code, reason]
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Protocol

from cluster.plumbing import wire
from cluster.realtime import frame_data
from cluster.worker.messages import target_fields

log = logging.getLogger("cluster.worker.ws")


def build_ws_request(kind: str, conn_key: str, info: dict[str, Any],
                     env: dict[str, Any]) -> dict[str, Any]:
    req = {"type": kind, "id": conn_key, "conn": conn_key, **info}
    if kind == "ws.message":
        req["text"] = env.get("text") if isinstance(env.get("text"), str) else None
        req["bytes"] = env.get("bytes") if isinstance(env.get("bytes"), bytes) else None
    elif kind == "ws.close":
        req["code"] = env["code"]
        req["reason"] = env["reason"]
    return req


def connect_info(env: dict[str, Any]) -> dict[str, Any]:
    """What every later event of the connection also carries."""
    fields = target_fields(env, "ws")
    return {**fields, "subprotocols": [s for s in env["subprotocols"] if isinstance(s, str)]}


def _many(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def reply_actions(kind: str, number: int, msg: Any) -> list[list[Any]]:
    """The gateway actions a handler's answer asks for."""
    actions: list[list[Any]] = []
    if kind == "ws.connect":
        if isinstance(msg, dict) and msg.get("accept") is True:
            headers = msg.get("headers") or {}
            pairs = [[str(k), str(v)] for k, v in
                     (headers.items() if isinstance(headers, dict) else headers)]
            shard = msg.get("shard")
            subprotocol = msg.get("subprotocol")
            actions.append(wire.accept(number, subprotocol if isinstance(subprotocol, str)
                                       else None, pairs,
                                       str(shard) if shard is not None and shard != "" else None))
        else:
            status = msg.get("status", 403) if isinstance(msg, dict) else 403
            body = msg.get("body") if isinstance(msg, dict) else None
            return [wire.reject(number, status if type(status) is int else 403,
                                body if isinstance(body, (str, bytes)) else None)]
    if not isinstance(msg, dict):
        return actions
    for group in _many(msg.get("join")):
        actions.append(wire.join(number, str(group)))
    for group in _many(msg.get("leave")):
        actions.append(wire.leave(number, str(group)))
    for sub in _many(msg.get("subscribe")):
        # {"group": g} joins; with "since": [epoch, offset] it also recovers.
        if isinstance(sub, dict) and "group" in sub:
            since = sub.get("since")
            epoch, offset = since if isinstance(since, (list, tuple)) and \
                len(since) == 2 else (None, None)
            actions.append(wire.subscribe(
                number, str(sub["group"]), epoch if isinstance(epoch, str) else None,
                offset if type(offset) is int else None))
    send = msg.get("send")
    for data in (send if isinstance(send, list) else _many(send)):
        actions.append(wire.send(number, frame_data(data)))
    broadcasts = msg.get("broadcast")
    if isinstance(broadcasts, dict):
        for group, data in broadcasts.items():
            actions.append(wire.broadcast(str(group), frame_data(data)))
    close = msg.get("close")
    if close is not None:
        code, reason = (close[0], close[1]) if isinstance(close, (list, tuple)) else (close, "")
        actions.append(wire.close(number, int(code), str(reason)))
    return actions


class EventRunner(Protocol):
    """Who runs one queued event (the worker's `WsEvents`)."""

    async def run_event(self, item: Any) -> None: ...


class ConnectionQueues:
    """Runs each connection's events one at a time, in arrival order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, runner: EventRunner) -> None:
        self.loop = loop
        self.runner = runner
        self.queues: dict[str, deque[Any]] = {}

    def submit(self, key: str, item: Any) -> None:
        queue = self.queues.get(key)
        if queue is not None:
            queue.append(item)
            return
        self.queues[key] = deque([item])
        self.loop.create_task(self._drain(key))

    async def _drain(self, key: str) -> None:
        queue = self.queues[key]
        try:
            while queue:
                try:
                    await self.runner.run_event(queue[0])
                except Exception:  # one event's failure must not stop the next
                    log.exception("WebSocket event for %s failed", key)
                queue.popleft()
        finally:
            del self.queues[key]
