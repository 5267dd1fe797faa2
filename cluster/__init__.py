"""cluster: a Python web server that scales across processes and machines.

What a handler imports lives here, and importing it pulls in no gateway or
coordinator code.
"""

# First: whether this process runs the hot modules compiled (see cluster/compiled.py).
from cluster import compiled  # noqa: F401
from cluster.app import App
from cluster.deferred import DEFER, reply
from cluster.errors import StateError, StateUnavailable
from cluster.realtime import (
    broadcast,
    close,
    join,
    leave,
    members,
    publish,
    push,
    subscribe,
)
from cluster.responses import event_stream, redirect

__all__ = [
    "DEFER",
    "App",
    "StateError",
    "StateUnavailable",
    "__version__",
    "broadcast",
    "close",
    "event_stream",
    "join",
    "leave",
    "members",
    "publish",
    "push",
    "redirect",
    "reply",
    "subscribe",
]
__version__ = "0.2.0"  # the one place the version is written (pyproject reads it)
