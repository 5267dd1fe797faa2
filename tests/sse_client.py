"""A Server-Sent Events reader for the tests: a raw HTTP/1.1 socket, the chunked
body decoded and the events parsed as the WHATWG standard says, so what the gateway
writes is checked byte for byte, not through a library's forgiveness."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


@dataclass
class Event:
    data: str
    id: str = ""
    name: str = ""


@dataclass
class EventStream:
    sock: socket.socket
    head: str
    chunked: bool
    raw: bytes = b""  # body bytes not yet decoded
    text: str = ""  # decoded body not yet parsed into events
    events: list[Event] = field(default_factory=list)
    comments: int = 0
    ended: bool = False  # the last chunk (or the connection's end) came

    @property
    def status(self) -> int:
        return int(self.head.split(" ", 2)[1])

    def header(self, name: str) -> str:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return ""

    def read_until(self, predicate: object, timeout: float = 10.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        while not predicate(self):  # type: ignore[operator]
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; events so far: {self.events}"
            assert not self.ended, f"the stream ended; events: {self.events}"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                self.ended = True
                continue
            self._feed(data)
        return self.events

    def _feed(self, data: bytes) -> None:
        self.raw += data
        if self.chunked:
            while True:
                size_line, sep, rest = self.raw.partition(b"\r\n")
                if not sep:
                    break
                size = int(size_line, 16)
                if size == 0:
                    self.ended = True
                    self.raw = b""
                    break
                if len(rest) < size + 2:
                    break
                assert rest[size:size + 2] == b"\r\n", rest[:size + 2]
                self.text += rest[:size].decode()
                self.raw = rest[size + 2:]
        else:
            self.text += self.raw.decode()
            self.raw = b""
        while "\n\n" in self.text:
            block, self.text = self.text.split("\n\n", 1)
            event = Event("")
            lines = []
            for line in block.split("\n"):
                if line.startswith(":"):
                    self.comments += 1
                    continue
                key, _, value = line.partition(": ")
                if key == "data":
                    lines.append(value)
                elif key == "id":
                    event.id = value
                elif key == "event":
                    event.name = value
            if lines:
                event.data = "\n".join(lines)
                self.events.append(event)

    def close(self) -> None:
        self.sock.close()


def open_stream(port: int, path: str, headers: dict[str, str] | None = None,
                method: str = "GET", timeout: float = 10.0) -> EventStream:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Accept: text/event-stream"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data:
        assert time.monotonic() < deadline, data
        chunk = sock.recv(65536)
        assert chunk, f"closed before the head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    stream = EventStream(sock, head.decode(), b"transfer-encoding: chunked" in head.lower())
    if rest:
        stream._feed(rest)
    return stream
