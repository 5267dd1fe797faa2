"""The uvicorn side of the HTTP benchmark: a raw ASGI app equivalent to examples/hello."""

from __future__ import annotations

import os
from typing import Any

WORKER = f"uvicorn-{os.getpid()}".encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"x-worker", WORKER)]})
    await send({"type": "http.response.body", "body": b"hello\n"})
