"""One request/response exchange as the gateway tracks it, from parse to last byte."""

from __future__ import annotations

from typing import Any, Protocol

from cluster.gateway.framing import UNDECIDED, Framing

IDEMPOTENT_RETRY = frozenset({"GET", "HEAD"})


class ResponseSink(Protocol):
    """Where an exchange's response goes: the HTTP connection that asked."""

    closed: bool

    def deliver(self, exchange: Exchange, part: dict[str, Any]) -> None: ...

    def deliver_error(self, exchange: Exchange, status: int,
                      headers: list[tuple[str, str]] | None = None) -> None: ...


class Upstream(Protocol):
    """Where a gateway's client connections send their requests, and tell what became
    of them: the dispatcher (dispatch.py), which hands each to a worker."""

    def submit(self, exchange: Exchange) -> None:
        """A request is complete: answer it (through `exchange.sink`)."""

    def client_gone(self, exchange: Exchange) -> None:
        """Its client left before the whole answer came."""

    def stream_credit(self, exchange: Exchange, nbytes: int) -> None:
        """The client took `nbytes` more of a streamed answer."""


class Exchange:
    __slots__ = (
        "began",
        "deadline",
        "done",
        "envelope",
        "framing",
        "id",
        "keep_alive",
        "method",
        "parts",
        "retried",
        "sink",
        "started",
        "status",
        "version",
        "worker",
    )

    def __init__(self, envelope: dict[str, Any], method: str, version: str,
                 keep_alive: bool, sink: ResponseSink) -> None:
        self.envelope = envelope
        self.method = method
        self.version = version
        self.keep_alive = keep_alive
        self.sink = sink
        self.id = 0
        self.worker: bytes | None = None
        self.retried = False
        self.deadline = 0.0
        self.started = False  # response head written (or buffered) to the client
        self.done = False
        self.parts: list[dict[str, Any]] | None = None  # waiting behind earlier responses
        self.framing = UNDECIDED  # how the body goes out, once the head is known
        self.began = 0.0  # loop time the request was complete
        self.status = 0  # of the response head, once written

    def frame(self, framing: Framing) -> None:
        """The response's framing, decided (framing.py): a body that ends with the
        connection means this connection cannot be kept."""
        self.framing = framing
        if framing.until_close:
            self.keep_alive = False

    @property
    def chunked(self) -> bool:
        return self.framing.chunked

    @property
    def head_only(self) -> bool:
        """No body goes out: HEAD, 1xx, 204, 304, or the gateway answered instead."""
        return self.framing.no_body

    @property
    def retryable(self) -> bool:
        return not self.retried and not self.started and self.method in IDEMPOTENT_RETRY
