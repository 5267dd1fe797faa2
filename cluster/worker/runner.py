"""What a worker's two runners share: native handlers (requests.py) and an ASGI app
(asgi_runner.py). The worker picks one at start, by what the handler is, and its
gateway links hand every request and WebSocket event to it.

Both admit at most `--concurrency` requests at once; any excess (the prefetched
ones, or several gateways each using their full credit) waits in a local queue,
which the credit keeps bounded. A final response (or DEFERRED) sent through `send`
ends a request and starts the next one waiting. Both stream under the gateway's
flow control (flow.py).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from typing import Any

from cluster.plumbing.config import WorkerConfig
from cluster.worker.flow import Streams
from cluster.worker.messages import ReplyLink
from cluster.worker.outcomes import HandlerOutcomes


class Runner(ABC):
    def __init__(self, loop: asyncio.AbstractEventLoop, config: WorkerConfig,
                 outcomes: HandlerOutcomes) -> None:
        self.loop = loop
        self.config = config
        self.outcomes = outcomes
        self.running = 0
        self.backlog: deque[tuple[ReplyLink, dict[str, Any]]] = deque()
        self.streams = Streams()  # flow control of the responses being streamed
        self.ws_counts: dict[str, int] = {}  # WebSocket events by kind, on the loop thread

    @property
    def idle(self) -> bool:
        return not self.running and not self.backlog

    def request(self, link: ReplyLink, env: dict[str, Any]) -> None:
        """A REQUEST from a gateway: run it now, or once a slot is free."""
        if self.running >= self.config.concurrency:
            self.backlog.append((link, env))
            return
        self.running += 1
        self.start(link, env)

    def send(self, link: ReplyLink, env: dict[str, Any]) -> None:
        """A request's answer, or part of it, on its way back."""
        link.post(env)
        if not env.get("more"):  # a final response, or DEFERRED: the call is over
            self.running -= 1
            if self.backlog and self.running < self.config.concurrency:
                self.running += 1
                self.start(*self.backlog.popleft())

    def stream_credit(self, link: ReplyLink, rid: int, nbytes: int) -> None:
        self.streams.credit(link.gateway_id, rid, nbytes)

    # -- what each runner does its own way -----------------------------------------------
    @abstractmethod
    def start(self, link: ReplyLink, env: dict[str, Any]) -> None:
        """Run an admitted request; its answer goes back through `send`."""

    @abstractmethod
    def ws_event(self, link: ReplyLink, env: dict[str, Any]) -> None:
        """A WebSocket event (open, message, closed) or a shard hand-over."""

    def client_gone(self, link: ReplyLink, rid: int) -> None:
        """The client of a running request left (GONE)."""
        self.streams.client_gone(link.gateway_id, rid)

    @abstractmethod
    def close(self, timeout: float) -> None:
        """At the worker's end: what is still running gets `timeout` seconds."""
