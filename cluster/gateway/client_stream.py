"""What the WebSocket hub needs of a client connection's protocol, whichever it is:
a WebSocket (ws_core.py) or a Server-Sent Events stream (sse_core.py). Sans-I/O:
bytes in, events out; messages in, bytes to send out.

A base class rather than a Protocol: the hub is compiled with mypyc, which calls
the methods of a native base class through its vtable, not by attribute lookup.
"""

from __future__ import annotations

from typing import Any


class ClientStream:
    pongs: int  # answers to our keepalive pings so far

    def receive_data(self, data: bytes) -> list[Any]:
        """Bytes from the client: the messages and the close they complete."""
        raise NotImplementedError

    def send(self, data: str | bytes) -> None:
        """One message to the client (a text or a binary one)."""
        raise NotImplementedError

    def send_numbered(self, text: str, group: str, event_id: str) -> None:
        """A published message of `group` (JSON text), `event_id` its "epoch:offset";
        or a recovery's announcement, with an empty `event_id`."""
        self.send(text)

    def ping(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self, code: int, reason: str = "") -> None:
        raise NotImplementedError

    def data_to_send(self) -> bytes:
        raise NotImplementedError

    def is_open(self) -> bool:
        """Messages can still be sent: not closed, or closing, by either side."""
        raise NotImplementedError

    def close_expected(self) -> bool:
        """Nothing more will be sent: the transport closes once this is written."""
        raise NotImplementedError
