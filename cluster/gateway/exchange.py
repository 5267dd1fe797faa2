"""One request/response exchange as the gateway tracks it, from parse to last byte."""

from __future__ import annotations

from typing import Any, Protocol

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
        "chunked",
        "deadline",
        "done",
        "envelope",
        "head_only",
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
        self.chunked = False
        self.head_only = False
        self.began = 0.0  # loop time the request was complete
        self.status = 0  # of the response head, once written

    @property
    def retryable(self) -> bool:
        return not self.retried and not self.started and self.method in IDEMPOTENT_RETRY
