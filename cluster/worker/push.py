"""The push runtime of a worker process: what `cluster.push`, `broadcast`, `join`,
`publish`, `reply`, `members` and the rest (cluster/realtime.py) do here.

Any thread may call them: a handler's pool thread hands its action to the loop,
which alone writes to the gateway links.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

from cluster.errors import BadField, BadResponse
from cluster.etcd.publisher import EtcdPublisher
from cluster.plumbing import wire
from cluster.plumbing.coordinator_link import CoordinatorLink
from cluster.plumbing.http_fields import encode_fields
from cluster.worker.group_view import GroupView
from cluster.worker.messages import ReplyLink, normalize
from cluster.worker.threadpool import wait_lent

log = logging.getLogger("cluster.worker")


class Push:
    def __init__(self, loop: asyncio.AbstractEventLoop, worker_id: str,
                 links: Mapping[str, ReplyLink], history: CoordinatorLink | EtcdPublisher,
                 answer_timeout: float) -> None:
        self.loop = loop
        self.worker_id = worker_id
        self.links = links  # the worker's own dict of gateway links: they come and go
        # Where cluster.publish goes: the coordinator, which numbers, keeps and fans
        # out; or etcd, which numbers (cluster/etcd/publisher.py).
        self.history = history
        self.answer_timeout = answer_timeout  # --state-timeout: members() waits this long
        self.loop_thread = threading.get_ident()
        self._queries: dict[int, tuple[asyncio.Future[list[str]], set[str], list[str]]] = {}
        self._query_rid = 0
        self.view = GroupView()  # which gateways hold which groups
        self.broadcast_sends = 0  # broadcast messages sent, one per gateway holding the group

    def act(self, gateway_id: str, action: list[Any]) -> bool:
        """Send one WebSocket action (a `wire` action) to a gateway."""
        if threading.get_ident() != self.loop_thread:
            self.loop.call_soon_threadsafe(self._act, gateway_id, action)
            return gateway_id in self.links
        return self._act(gateway_id, action)

    def broadcast(self, group: str, data: str | bytes,
                  exclude: tuple[str, int] | None) -> None:
        """To each gateway that holds members of `group` (group_view.py), which fans
        out to them; `exclude` is a connection (gateway, number) not sent to."""
        if threading.get_ident() != self.loop_thread:
            self.loop.call_soon_threadsafe(self.broadcast, group, data, exclude)
            return
        links = self.links
        for gid in list(self.view.gateways(group)):
            link = links.get(gid)
            if link is None:
                continue
            skip = exclude[1] if exclude is not None and exclude[0] == gid else None
            self.broadcast_sends += 1
            link.post(wire.envelope(wire.WS_ACTIONS,
                                    actions=[wire.broadcast(group, data, skip)]))

    def _act(self, gateway_id: str, action: list[Any]) -> bool:
        target = self.links.get(gateway_id)
        if target is None:
            log.info("push to a connection of gateway %s, which this worker does not know",
                     gateway_id)
            return False
        target.post(wire.envelope(wire.WS_ACTIONS, actions=[action]))
        return True

    def reply(self, gateway_id: str, number: int, msg: Any) -> bool:
        """cluster.reply: the answer to a deferred request, whole (no streaming)."""
        status, headers, body = normalize(msg)
        if not isinstance(body, bytes):
            raise BadResponse("a deferred reply cannot be streamed")
        try:
            head = encode_fields(headers)[0]
        except BadField as exc:
            raise BadResponse(str(exc)) from None
        env = wire.envelope(wire.DEFERRED_REPLY, id=number, status=status, head=head,
                            body=body)
        if threading.get_ident() != self.loop_thread:
            self.loop.call_soon_threadsafe(self._post_to_gateway, gateway_id, env)
            return gateway_id in self.links
        return self._post_to_gateway(gateway_id, env)

    def publish(self, group: str, data: Any) -> None:
        """cluster.publish: to the coordinator, which numbers, keeps and fans out; on
        etcd, a put to the group's key, which etcd numbers (cluster/etcd/publisher.py)."""
        history = self.history
        if isinstance(history, EtcdPublisher):
            if threading.get_ident() != self.loop_thread:
                self.loop.call_soon_threadsafe(history.publish, group, data)
            else:
                history.publish(group, data)
            return
        env = wire.envelope(wire.HISTORY_PUBLISH, id=self.worker_id, group=group, data=data)
        if threading.get_ident() != self.loop_thread:
            self.loop.call_soon_threadsafe(history.post, env)
        else:
            history.post(env)

    def _post_to_gateway(self, gateway_id: str, env: dict[str, Any]) -> bool:
        link = self.links.get(gateway_id)
        if link is None:
            log.info("reply for gateway %s, which this worker does not know", gateway_id)
            return False
        link.post(env)
        return True

    def on_loop(self) -> bool:
        return threading.get_ident() == self.loop_thread

    def members_blocking(self, group: str) -> list[str]:
        """From a handler thread: ask on the loop, wait here."""
        future = asyncio.run_coroutine_threadsafe(self.members(group), self.loop)
        return wait_lent(future, self.answer_timeout + 1.0)

    async def members(self, group: str) -> list[str]:
        self._query_rid += 1
        rid = self._query_rid
        fut: asyncio.Future[list[str]] = self.loop.create_future()
        # Only the gateways that hold members of it are asked.
        waiting = {gid for gid in self.view.gateways(group) if gid in self.links}
        self._queries[rid] = (fut, waiting, [])
        for gid in waiting:
            self.links[gid].post(wire.envelope(wire.WS_QUERY, rid=rid, group=group))
        if not waiting:
            fut.set_result([])
        try:
            return await asyncio.wait_for(fut, self.answer_timeout)
        except TimeoutError:
            # A gateway that does not answer: report who did answer.
            return sorted(self._queries[rid][2])
        finally:
            self._queries.pop(rid, None)

    def on_query_reply(self, gateway_id: str, msg: dict[str, Any]) -> None:
        query = self._queries.get(msg["rid"])
        if query is None:
            return
        fut, waiting, found = query
        found.extend(f"{gateway_id}/{n}" for n in msg["conns"] if isinstance(n, int))
        waiting.discard(gateway_id)
        if not waiting and not fut.done():
            fut.set_result(sorted(found))
