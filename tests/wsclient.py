"""A raw WebSocket client for byte-level tests: our own frames, right or wrong.

Valid traffic in tests uses the `websockets` client; this one exists to send what
no correct client would (unmasked frames, reserved bits, broken UTF-8, ...).
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time


def handshake(port: int, path: str = "/echo", extra: str = "",
              key: str | None = None, timeout: float = 10.0) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    head = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in head:
        assert time.monotonic() < deadline, head
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True,
          rsv: int = 0) -> bytes:
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, (0x80 if mask else 0) | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, length)
    else:
        header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, length)
    if not mask:
        return header + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + masked


def read_close(sock: socket.socket, timeout: float = 10.0) -> int | None:
    """Read until the server's close frame; its code (None: closed without one)."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return None
        if not chunk:
            break
        data += chunk
        code = _find_close(data)
        if code is not None:
            return code
    return _find_close(data)


def _find_close(data: bytes) -> int | None:
    pos = 0
    while pos + 2 <= len(data):
        opcode = data[pos] & 0x0F
        length = data[pos + 1] & 0x7F
        pos += 2
        if length == 126:
            length = struct.unpack_from("!H", data, pos)[0]
            pos += 2
        elif length == 127:
            length = struct.unpack_from("!Q", data, pos)[0]
            pos += 8
        if pos + length > len(data):
            return None
        if opcode == 0x8:
            return int(struct.unpack_from("!H", data, pos)[0]) if length >= 2 else 1005
        pos += length
    return None
