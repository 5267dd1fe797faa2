"""The WebSocket core, byte for byte: a handshake in, the 101 out; masked client
frames in, events out; protocol errors answered with the close code RFC 6455 names."""

from __future__ import annotations

import base64
import hashlib
import os
import struct

import pytest

from cluster.gateway.http_core import Request
from cluster.gateway.ws_core import (
    Binary,
    Closed,
    Text,
    WebSocketCore,
    WsOptions,
    origin_refused,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = [("host", "x"), ("upgrade", "websocket"), ("connection", "Upgrade"),
           ("sec-websocket-key", KEY), ("sec-websocket-version", "13")]


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """A client frame, as RFC 6455 §5.2 lays it out."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", first, (0x80 if mask else 0) | size)
    else:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def opened(**options: object) -> WebSocketCore:
    core = WebSocketCore(WsOptions(deflate=False, **options))  # type: ignore[arg-type]
    assert core.open_handshake(Request("GET", "/ws", "1.1", list(UPGRADE))) is None
    status, _ = core.accept(None, [])
    assert status == 101
    return core


def test_the_handshake_answers_101_with_the_accept_key() -> None:
    core = WebSocketCore(WsOptions(deflate=False))
    offered = [*UPGRADE, ("sec-websocket-protocol", "chat, superchat")]
    assert core.open_handshake(Request("GET", "/ws", "1.1", offered)) is None
    assert core.offered == ["chat", "superchat"]
    status, data = core.accept("chat", [("x-extra", "1")])
    expected = base64.b64encode(hashlib.sha1(
        (KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    assert status == 101
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert f"Sec-WebSocket-Accept: {expected}\r\n".encode() in data
    assert b"Sec-WebSocket-Protocol: chat\r\n" in data and b"x-extra: 1\r\n" in data


@pytest.mark.parametrize(("request_", "status"), [
    (Request("POST", "/ws", "1.1", list(UPGRADE)), 400),
    (Request("GET", "/ws", "1.0", list(UPGRADE)), 400),
    (Request("GET", "/ws", "1.1", [*UPGRADE[:4], ("sec-websocket-version", "8")]), 426),
])
def test_bad_handshakes_are_refused(request_: Request, status: int) -> None:
    assert WebSocketCore(WsOptions()).open_handshake(request_) == status


def test_a_handshake_without_a_key_is_refused_by_websockets_at_accept() -> None:
    core = WebSocketCore(WsOptions())
    assert core.open_handshake(Request("GET", "/ws", "1.1", UPGRADE[:3])) is None
    status, data = core.accept(None, [])
    assert status == 400 and data.startswith(b"HTTP/1.1 400")


def test_an_origin_off_the_allow_list_is_refused_403_before_any_worker() -> None:
    core = WebSocketCore(WsOptions(origins=("https://ok.test",)))
    assert core.open_handshake(Request("GET", "/", "1.1",
                                       [*UPGRADE, ("origin", "https://evil.test")])) == 403
    assert "Origin 'https://evil.test' is another site's (Host 'x'" in core.refusal
    assert core.open_handshake(Request("GET", "/", "1.1",
                                       [*UPGRADE, ("origin", "https://ok.test")])) is None


@pytest.mark.parametrize(("origin", "host", "allowed", "refused"), [
    (None, "a.test", (), False),  # not a browser
    ("http://a.test", "a.test", (), False),
    ("http://A.test:80", "a.test", (), False),  # the default port, either way
    ("https://a.test", "a.test:443", (), False),
    ("http://127.0.0.1:8000", "127.0.0.1:8000", (), False),
    ("http://127.0.0.1:8001", "127.0.0.1:8000", (), True),  # another port: another site
    ("http://evil.example", "a.test", (), True),
    ("null", "a.test", (), True),
    ("http://evil.example", None, (), True),
    ("http://evil.example", "a.test", ("http://evil.example",), False),
    ("http://evil.example", "a.test", ("*",), False),
    ("http://a.test", "a.test", ("http://b.test",), False),  # its own host stays allowed
])
def test_same_origin_by_default(origin: str | None, host: str | None,
                                allowed: tuple[str, ...], refused: bool) -> None:
    assert origin_refused(origin, host, allowed) is refused


def test_text_binary_and_a_fragmented_message() -> None:
    core = opened()
    data = frame(0x1, "héllo".encode()) + frame(0x2, b"\x00\x01") + \
        frame(0x1, b"ab", fin=False) + frame(0x0, b"cd", fin=False) + frame(0x0, b"e")
    assert core.receive_data(data) == [Text("héllo"), Binary(b"\x00\x01"), Text("abcde")]


def test_a_ping_is_answered_with_a_pong_and_our_pings_pongs_are_counted() -> None:
    core = opened()
    assert core.receive_data(frame(0x9, b"hi")) == []
    assert core.data_to_send() == b"\x8a\x02hi"  # unmasked pong, same payload
    core.ping(b"")
    assert core.data_to_send() == b"\x89\x00"
    core.receive_data(frame(0xA, b""))
    assert core.pongs == 1


def test_sending_frames_text_and_binary_unmasked() -> None:
    core = opened()
    core.send("hé")
    core.send(b"\x01")
    assert core.data_to_send() == b"\x81\x03h\xc3\xa9" + b"\x82\x01\x01"


def test_the_close_handshake_either_way() -> None:
    core = opened()
    events = core.receive_data(frame(0x8, struct.pack("!H", 1000) + b"bye"))
    assert events == [Closed(1000, "bye")]
    assert core.data_to_send() == b"\x88\x05\x03\xe8bye"  # echoed
    ours = opened()
    ours.close(4000, "as you wish")
    assert ours.data_to_send() == b"\x88\x0d\x0f\xa0as you wish"
    assert ours.close_expected()  # now the client's close, then TCP's


@pytest.mark.parametrize(("data", "code"), [
    (frame(0x1, b"\xff\xfe"), 1007),  # invalid UTF-8
    (frame(0x1, b"x", mask=False), 1002),  # a client must mask
    (frame(0x3, b""), 1002),  # a reserved opcode
    (frame(0x1, b"y" * 200), 1009),  # over max_size (100 here)
])
def test_bad_input_closes_with_the_code_rfc6455_names(data: bytes, code: int) -> None:
    core = opened(max_size=100)
    events = core.receive_data(data)
    assert events and isinstance(events[-1], Closed) and events[-1].code == code
    sent = core.data_to_send()
    assert sent[:1] == b"\x88" and sent[2:4] == struct.pack("!H", code)  # our close frame
