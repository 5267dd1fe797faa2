"""One request/response exchange as the gateway tracks it, from parse to last byte.

Its state is explicit and changes only through its own methods, by the table below:
queued (complete, not yet sent to a worker: waiting for credit, or answered here),
at a worker, started (the response head is out, or buffered behind an earlier
response), done (its last byte handled). "Must close" (the connection ends after
it) stands beside them: any of them can come to need it.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Protocol

from cluster.gateway.framing import UNDECIDED, Framing
from cluster.plumbing.response_parts import ResponsePart

log = logging.getLogger("cluster.gateway")

# Final: mypyc compiles these in as constants. Not the table: a Final tuple would be
# built anew wherever it is read.
QUEUED: Final = 0
AT_WORKER: Final = 1
STARTED: Final = 2
DONE: Final = 3
STATES = ("queued", "at a worker", "started", "done")
SENT: Final = 0  # the events
HEAD: Final = 1
END: Final = 2
EVENTS = ("sent to a worker", "the response head", "the end")
IMPOSSIBLE: Final = -1
# The state each event leads to, from each state (QUEUED, AT_WORKER, STARTED, DONE).
NEXT: tuple[tuple[int, ...], ...] = (
    (AT_WORKER, AT_WORKER, IMPOSSIBLE, IMPOSSIBLE),  # SENT (again: a retry elsewhere)
    (STARTED, STARTED, IMPOSSIBLE, IMPOSSIBLE),  # HEAD (from a queue: answered here)
    (DONE, DONE, DONE, DONE),  # END (again: nothing changes)
)

IDEMPOTENT_RETRY = frozenset({"GET", "HEAD"})


class ResponseSink(Protocol):
    """Where an exchange's response goes: the HTTP connection that asked."""

    closed: bool

    def deliver(self, exchange: Exchange, part: ResponsePart) -> None: ...

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
        "envelope",
        "framing",
        "id",
        "keep_alive",
        "method",
        "parts",
        "retried",
        "sink",
        "state",
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
        self.state = QUEUED
        self.worker: bytes | None = None  # the last one it was sent to
        self.retried = False
        self.deadline = 0.0
        self.parts: list[ResponsePart] | None = None  # waiting behind earlier responses
        self.framing = UNDECIDED  # how the body goes out, once the head is known
        self.began = 0.0  # loop time the request was complete
        self.status = 0  # of the response head, once written

    # -- the state -------------------------------------------------------------------
    def _move(self, event: int) -> bool:
        state = NEXT[event][self.state]
        if state == IMPOSSIBLE:  # a bug of ours: said once, and nothing changes
            log.error("request %d: %s cannot come when it is %s; ignored", self.id,
                      EVENTS[event], STATES[self.state])
            return False
        self.state = state
        return True

    def sent_to(self, worker: bytes) -> None:
        if self._move(SENT):
            self.worker = worker

    def start(self) -> None:
        """The response head goes out now (or is buffered behind an earlier one)."""
        self._move(HEAD)

    def finish(self) -> None:
        """Its last byte is handled."""
        self._move(END)

    def must_close(self) -> None:
        """The connection ends after this response."""
        self.keep_alive = False

    def retry(self) -> None:
        """Its worker is gone before it answered: it goes to another, once."""
        self.retried = True

    @property
    def started(self) -> bool:
        return self.state >= STARTED

    @property
    def done(self) -> bool:
        return self.state == DONE

    def frame(self, framing: Framing) -> None:
        """The response's framing, decided (framing.py): a body that ends with the
        connection means this connection cannot be kept."""
        self.framing = framing
        if framing.until_close:
            self.must_close()

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
