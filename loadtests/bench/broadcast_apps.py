"""The two servers the broadcast benchmark compares, each joining every WebSocket
client into one group ("bench") when it connects.

cluster:  cluster-worker --handler loadtests.bench.broadcast_apps:join_all
          (subscribe_all for the history side: cluster.publish)
socketio: uvicorn loadtests.bench.broadcast_apps:socketio_app --workers 2, with
          BENCH_REDIS_URL naming the redis-server its AsyncRedisManager shares.
"""

from __future__ import annotations

import os
from typing import Any

GROUP = "bench"


def join_all(req: dict[str, Any], state: Any) -> dict[str, Any] | None:
    if req["type"] == "ws.connect":
        return {"accept": True, "join": GROUP}
    return None


def subscribe_all(req: dict[str, Any], state: Any) -> dict[str, Any] | None:
    """The same, subscribed for published (numbered, kept) messages."""
    if req["type"] == "ws.connect":
        return {"accept": True, "subscribe": {"group": GROUP}}
    return None


def _socketio_app() -> Any:
    import socketio

    manager = socketio.AsyncRedisManager(os.environ.get("BENCH_REDIS_URL",
                                                        "redis://127.0.0.1:6379/0"))
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager,
                               cors_allowed_origins="*")

    @sio.event  # type: ignore[untyped-decorator,unused-ignore]
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        await sio.enter_room(sid, GROUP)

    return socketio.ASGIApp(sio)


def __getattr__(name: str) -> Any:
    # Built on first use, so the cluster side does not need python-socketio.
    if name == "socketio_app":
        return _socketio_app()
    raise AttributeError(name)
