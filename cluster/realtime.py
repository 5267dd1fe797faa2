"""Reach WebSocket clients on any gateway from anywhere in a worker.

    from cluster import push, broadcast, join, leave, close, members

    push(conn, "hello")                 # conn ids look like 'gw-3f2a.../17'
    broadcast("room:1", {"msg": "hi"}, exclude=conn)
    join(conn, "room:1"); leave(conn, "room:1")
    close(conn, 1000, "bye")
    who = await members("room:1")       # {'count': 2, 'conns': [...]}, every gateway
                                        # (in a sync handler: members("room:1"))

Data is sent as a text frame when it is `str`, binary when `bytes`, and as JSON text
otherwise. The functions work from sync handlers (threads), async handlers and any
other code running in a worker process; outside one they raise `RuntimeError`.
`push` returns False when the connection's gateway is not known to this worker; a
push to a connection that has gone away is counted and logged by its gateway.

Deferred replies (seed Homor's suspended requests): a handler returns `DEFER`, and
later any worker calls `reply(req['id'], msg)`; see `examples/longpoll.py`.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from cluster.plumbing import wire


class PushRuntime(Protocol):
    def act(self, gateway_id: str, action: list[Any]) -> bool: ...

    def broadcast(self, group: str, data: str | bytes,
                  exclude: tuple[str, int] | None) -> None: ...

    def reply(self, gateway_id: str, number: int, msg: Any) -> bool: ...

    def publish(self, group: str, data: Any) -> None: ...

    def on_loop(self) -> bool: ...

    async def members(self, group: str) -> list[str]: ...

    def members_blocking(self, group: str) -> list[str]: ...


_runtime: PushRuntime | None = None


def install(runtime: PushRuntime | None) -> None:
    """Called by the worker runtime; not for handlers."""
    global _runtime
    _runtime = runtime


def runtime() -> PushRuntime:
    if _runtime is None:
        raise RuntimeError("push, broadcast, join, leave, close and members work inside a "
                           "cluster worker process")
    return _runtime


def frame_data(data: Any) -> str | bytes:
    if isinstance(data, (str, bytes)):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def split_conn(conn: str) -> tuple[str, int]:
    gateway, _, number = conn.rpartition("/")
    if not gateway or not number.isdigit():
        raise ValueError(f"{conn!r} is not a connection id")
    return gateway, int(number)


def push(conn: str, data: Any) -> bool:
    gateway, number = split_conn(conn)
    return runtime().act(gateway, wire.send(number, frame_data(data)))


def broadcast(group: str, data: Any, exclude: str | None = None) -> None:
    """One message to each gateway; each fans out to its members of `group`."""
    runtime().broadcast(group, frame_data(data), split_conn(exclude) if exclude else None)


def publish(group: str, data: Any) -> None:
    """A broadcast with history: the coordinator numbers it (offsets 1, 2, ... per
    group, under an epoch) and keeps the last --history-size for --history-ttl, and
    each member gets `{"group", "epoch", "offset", "data"}` as a JSON text frame.
    `data` must be JSON-able. A client that reconnects with the (epoch, offset) it
    last saw, subscribed with `{"subscribe": {"group": g, "since": [epoch, offset]}}`,
    gets what it missed, once and in order, then the live messages
    (docs/websocket.md). Fire and forget, like broadcast."""
    runtime().publish(group, data)


def subscribe(conn: str, group: str, since: tuple[str, int] | list[Any] | None = None
              ) -> bool:
    """Join `conn` to `group` for its published messages; with `since`, the (epoch,
    offset) of the last one it saw, it first gets what it missed (docs/websocket.md).
    The same as a handler's reply {"subscribe": ...}, for any layer: an ASGI app
    calls it after websocket.accept with scope["extensions"]["cluster"]["conn"]."""
    gateway, number = split_conn(conn)
    epoch, offset = (since[0], since[1]) if since is not None else (None, None)
    return runtime().act(gateway, wire.subscribe(number, group, epoch, offset))


def join(conn: str, group: str) -> bool:
    gateway, number = split_conn(conn)
    return runtime().act(gateway, wire.join(number, group))


def leave(conn: str, group: str) -> bool:
    gateway, number = split_conn(conn)
    return runtime().act(gateway, wire.leave(number, group))


def close(conn: str, code: int = 1000, reason: str = "") -> bool:
    gateway, number = split_conn(conn)
    return runtime().act(gateway, wire.close(number, code, reason))


def members(group: str) -> Any:
    """Cluster-wide presence: `{'count': n, 'conns': [ids]}` over every gateway.

    In async code `await members(group)`; in a sync handler (a pool thread) call it
    plainly: it waits for the gateways' answers and returns the dict."""
    rt = runtime()
    if rt.on_loop():
        return _members_async(rt, group)
    conns = rt.members_blocking(group)
    return {"count": len(conns), "conns": conns}


async def _members_async(rt: PushRuntime, group: str) -> dict[str, Any]:
    conns = await rt.members(group)
    return {"count": len(conns), "conns": conns}
