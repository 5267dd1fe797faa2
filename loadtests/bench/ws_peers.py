"""The peers the WebSocket memory benchmark opens idle connections to, beside the
cluster's gateway: a `websockets` server on its own, and an ASGI app for uvicorn.

    python -m loadtests.bench.ws_peers PORT     # the websockets server (uvloop)
    uvicorn loadtests.bench.ws_peers:app ...    # the ASGI app
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from websockets.asyncio.server import ServerConnection, serve


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def serve_forever(port: int) -> None:
    # Compression as the gateway ships it: offered, without context takeover.
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
    deflate = ServerPerMessageDeflateFactory(server_no_context_takeover=True,
                                             client_no_context_takeover=True)
    async with serve(echo, "127.0.0.1", port, extensions=[deflate], compression=None):
        await asyncio.Future()


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """Accepts every WebSocket and echoes it; answers plain HTTP with 200."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": event.get("text"),
                        "bytes": event.get("bytes")})
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


if __name__ == "__main__":
    uvloop.run(serve_forever(int(sys.argv[1])))
