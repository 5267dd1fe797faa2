"""A worker's WebSocket events: each connection's (or shard's) in one queue, in
arrival order, through the handler, answered with `wire` actions.

The gateway hashes a connection to this worker; a handler that accepts with a shard
key has the gateway hand the connection to that key's worker (WS_ADOPT), where its
events queue with the key's other connections. What a handler's answer means is in
`worker/ws.py`. The native runner (requests.py) owns this; ASGI apps' WebSockets run
in `asgi_runner.py` instead.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from cluster.plumbing import wire
from cluster.state import Backend
from cluster.worker.adapters import Adapter, settle
from cluster.worker.messages import ReplyLink, log_failure
from cluster.worker.ws import ConnectionQueues, build_ws_request, reply_actions
from cluster.worker.ws import connect_info as connect_ws_info

log = logging.getLogger("cluster.worker.ws")

KINDS = {wire.WS_OPEN: "ws.connect", wire.WS_MESSAGE: "ws.message",
         wire.WS_CLOSED: "ws.close"}
# A sharded connection arriving here, or leaving for another worker: no handler call.
HANDOVER = (wire.WS_ADOPT, wire.WS_RELEASE)


class WsEvents:
    def __init__(self, loop: asyncio.AbstractEventLoop, state: Backend, adapter: Adapter,
                 counts: dict[str, int]) -> None:
        self.loop = loop
        self.state = state
        self.adapter = adapter
        self.info: dict[str, dict[str, Any]] = {}  # per open connection, from its connect
        # connection -> its shard's event queue, for those adopted (a NUL first: a
        # shard key never names a connection's own queue)
        self.shard_queue: dict[str, str] = {}
        self.queues = ConnectionQueues(self.loop, self)
        self.counts = counts  # events by kind, counted on the loop thread (the runner's)

    def event(self, link: ReplyLink, env: dict[str, Any]) -> None:
        key = f"{link.gateway_id}/{env['conn']}"
        # A sharded connection's events queue with its shard's, so a room's messages
        # run one at a time in arrival order; the queue is known from the adoption on.
        k = env["k"]
        if k == wire.WS_ADOPT:
            self.shard_queue[key] = "\0" + env["shard"]
        queue = self.shard_queue.pop(key, key) if k in (wire.WS_CLOSED, wire.WS_RELEASE) \
            else self.shard_queue.get(key, key)
        self.queues.submit(queue, (link, env))

    async def run_event(self, item: tuple[ReplyLink, dict[str, Any]]) -> None:
        """One event of a connection (or shard), its turn come (ConnectionQueues)."""
        link, env = item
        number: int = env["conn"]
        key = f"{link.gateway_id}/{number}"
        if env["k"] == wire.WS_ADOPT:
            self.info[key] = {**connect_ws_info(env), "shard": env["shard"]}
            return
        if env["k"] == wire.WS_RELEASE:
            self.info.pop(key, None)
            return
        kind = KINDS[env["k"]]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "ws.connect":
            self.info[key] = connect_ws_info(env)
        info = self.info.get(key)
        if info is None:
            return  # an event after the close of a connection we never accepted
        req = build_ws_request(kind, key, info, env)
        try:
            inv = self.adapter.prepare_ws(req)
            if inv.is_async:
                result = await inv.fn(*inv.args, **inv.kwargs)
            elif inv.inline:
                result = inv.fn(*inv.args, **inv.kwargs)
            else:
                result = await self.loop.run_in_executor(
                    None, partial(inv.fn, *inv.args, **inv.kwargs))
            msg, ops = settle(inv, result)
            if ops:
                await self.state.acall(ops)
            actions = reply_actions(kind, number, msg)
        except Exception as exc:
            log_failure(req, exc)
            # 1011 after a connection was accepted; a refusal before.
            actions = [wire.reject(number, 500)] if kind == "ws.connect" else \
                [wire.close(number, 1011, "internal error")]
        if kind == "ws.close" or (actions and (actions[0][0] == wire.REJECT or (
                actions[0][0] == wire.ACCEPT and actions[0][4] is not None))):
            # Closed, refused, or accepted into a shard: the gateway hands that
            # connection to the shard's worker (this one again, perhaps) with WS_ADOPT.
            self.info.pop(key, None)
        if kind == "ws.message":
            actions.append(wire.ack(number))  # the gateway may read the client again
        if actions:
            link.post(wire.envelope(wire.WS_ACTIONS, actions=actions))
