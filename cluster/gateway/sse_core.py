"""A Server-Sent Events stream (the WHATWG HTML standard, "server-sent events") for
one response, sans-I/O: the messages a group or a push sends it, as event bytes.

The response head is written by the connection; from there this core makes the
body. Each message is one event: its text as `data:` lines (one per line of the
text), a binary message base64-encoded under `event: binary`. A published message
of the group the stream recovers by (`numbered`) carries `id: <epoch>:<offset>`,
which the browser sends back as `Last-Event-ID` when it reconnects; other groups'
published messages carry no id, so they never move that position. A keepalive ping
is a comment line, which browsers ignore and proxies count as traffic.

Over HTTP/1.1 the body is chunked here (one chunk per batch of events); over HTTP/2
the stream's DATA frames delimit it, and over HTTP/1.0 the end of the connection.
"""

from __future__ import annotations

import base64
from typing import Any

from cluster.gateway.client_stream import ClientStream

LAST_CHUNK = b"0\r\n\r\n"
PING = b": ping\n\n"


def event(text: str, event_id: str = "", name: str = "") -> bytes:
    """One event: optional id and name lines, the text as data lines, a blank line."""
    head = ""
    if event_id:
        head += f"id: {event_id}\n"
    if name:
        head += f"event: {name}\n"
    # A line break inside the text is CRLF, LF or CR to an event parser: each begins
    # a data line, and the parser joins them with LF.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return (head + "".join(f"data: {line}\n" for line in lines) + "\n").encode("utf-8")


class EventStreamCore(ClientStream):
    def __init__(self, chunked: bool, numbered: str | None, retry: int | None = None
                 ) -> None:
        self.chunked = chunked
        self.numbered = numbered  # the group whose offsets are this stream's event ids
        self.pongs = 0
        self._events: list[bytes] = []
        self._open = True
        self._ended = False  # the end of the body is in what is to be sent
        if retry is not None:  # the browser's pause before it reconnects, in ms
            self._events.append(f"retry: {retry}\n\n".encode())

    def receive_data(self, data: bytes) -> list[Any]:
        return []  # nothing a client sends after its request means anything here

    def send(self, data: str | bytes) -> None:
        if not self._open:
            return
        if isinstance(data, str):
            self._events.append(event(data))
        else:
            self._events.append(event(base64.b64encode(data).decode("ascii"), name="binary"))

    def send_numbered(self, text: str, group: str, event_id: str) -> None:
        if self._open:
            self._events.append(event(text, event_id if group == self.numbered else ""))

    def ping(self, data: bytes) -> None:
        if self._open:
            self._events.append(PING)
        self.pongs += 1  # nothing comes back: a client that reads is alive

    def close(self, code: int, reason: str = "") -> None:
        """End the stream (any code: an event stream has none); a browser's
        EventSource reconnects after its retry pause, to any gateway."""
        self._open = False

    def data_to_send(self) -> bytes:
        body = b"".join(self._events)
        self._events.clear()
        if not self.chunked:
            if not self._open:
                self._ended = True
            return body
        out = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
        if not self._open and not self._ended:
            self._ended = True
            out += LAST_CHUNK
        return out

    def is_open(self) -> bool:
        return self._open

    def close_expected(self) -> bool:
        return not self._open


Spec = tuple[list[str], tuple[str, str | None, int | None] | None, int | None]


def read_spec(value: object) -> Spec | None:
    """A worker's `events` ([join, [group, epoch, offset] or None, retry or None],
    cluster/worker/event_streams.py), checked; None when malformed."""
    if type(value) is not list or len(value) != 3:
        return None
    join, numbered, retry = value
    if type(join) is not list or not all(type(g) is str for g in join):
        return None
    if retry is not None and type(retry) is not int:
        return None
    if numbered is None:
        return join, None, retry
    if type(numbered) is not list or len(numbered) != 3 or type(numbered[0]) is not str:
        return None
    group, epoch, offset = numbered
    if not (epoch is None or type(epoch) is str) or not (offset is None or type(offset) is int):
        return None
    return join, (group, epoch, offset), retry
