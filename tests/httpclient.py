"""A small HTTP/1.1 client over a real socket for byte-level tests.

Responses are parsed by httptools' response parser (llhttp), not by hand.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field

import httptools


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    version: str = ""

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name.lower():
                return v
        return None


class _Collector:
    def __init__(self) -> None:
        self.done: list[Response] = []
        self.current = Response()
        self.parts: list[bytes] = []
        self.parser: httptools.HttpResponseParser | None = None

    def on_headers_complete(self) -> None:
        # Per message: one read may complete several responses.
        assert self.parser is not None
        self.current.status = self.parser.get_status_code()
        self.current.version = self.parser.get_http_version()

    def on_message_begin(self) -> None:
        self.current = Response()
        self.parts = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name.decode().lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        self.current.body = b"".join(self.parts)
        self.done.append(self.current)


OPEN: list[Conn] = []  # closed after every test by the autouse fixture in conftest


class Conn:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        OPEN.append(self)
        self.timeout = timeout
        self._collector = _Collector()
        self._parser = self._new_parser()
        self.eof = False
        self.raw = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _pump(self, deadline: float) -> None:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = self.sock.recv(65536)
        self.raw += chunk
        if not chunk:
            self.eof = True
            with contextlib.suppress(httptools.HttpParserError):
                self._parser.feed_data(b"")  # close-delimited body ends here
            return
        self._parser.feed_data(chunk)

    def _new_parser(self) -> httptools.HttpResponseParser:
        parser = httptools.HttpResponseParser(self._collector)
        self._collector.parser = parser
        return parser

    def read_responses(self, count: int) -> list[Response]:
        """Parsed whole responses; not for HEAD, whose framing headers announce a body
        that never comes (tests read those as raw bytes)."""
        deadline = time.monotonic() + self.timeout
        while len(self._collector.done) < count:
            if self.eof:
                raise AssertionError(f"closed after {len(self._collector.done)} responses; "
                                     f"raw: {self.raw[-500:]!r}")
            self._pump(deadline)
        got, self._collector.done = self._collector.done[:count], self._collector.done[count:]
        return got

    def read_response(self) -> Response:
        return self.read_responses(1)[0]

    def read_raw_until(self, marker: bytes) -> bytes:
        deadline = time.monotonic() + self.timeout
        while marker not in self.raw and not self.eof:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                self.eof = True
            self.raw += chunk
        return self.raw

    def wait_closed(self, timeout: float) -> bool:
        """True when the server closes the connection within `timeout`."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            try:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                self.eof = True
                break
            self.raw += chunk
            if not chunk:
                self.eof = True
        return self.eof

    def close(self) -> None:
        self.sock.close()


def get(port: int, path: str = "/", headers: dict[str, str] | None = None,
        method: str = "GET", body: bytes = b"", timeout: float = 10.0) -> Response:
    if method == "HEAD":
        raise ValueError("read HEAD responses as raw bytes: see test_head_has_headers_...")
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    conn = Conn(port, timeout)
    try:
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return conn.read_responses(1)[0]
    finally:
        conn.close()
