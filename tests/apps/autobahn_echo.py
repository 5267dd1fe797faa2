"""The echo server the Autobahn test suite (kosoku) drives: every path, every message."""

from __future__ import annotations

from typing import Any


def echo(req: dict[str, Any], state: Any) -> dict[str, Any] | None:
    if req["type"] == "ws.connect":
        return {"accept": True}
    if req["type"] == "ws.message":
        return {"send": req["text"] if req["text"] is not None else req["bytes"]}
    return None
