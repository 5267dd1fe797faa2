"""Deferred replies (seed Homor's suspended requests): a handler returns DEFER, which
frees its worker at once, and later any worker answers with `reply(request_id, msg)`.
The gateway holds the client until then, or until --defer-timeout (504)."""

from __future__ import annotations

from typing import Any

from cluster.realtime import runtime, split_conn


class _Defer:
    """The answer a handler gives when it will reply later, with `reply()`."""

    def __repr__(self) -> str:
        return "DEFER"


DEFER: Any = _Defer()


def reply(request_id: str, msg: Any) -> bool:
    """Answer a request whose handler returned DEFER; from any worker, at any time
    before the gateway's --defer-timeout. `msg` is what a handler would return.
    False when the request's gateway is not known here."""
    gateway, number = split_conn(request_id)
    return runtime().reply(gateway, number, msg)
