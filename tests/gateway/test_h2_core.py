"""The HTTP/2 core, byte for byte: an h2 client connection makes the bytes a real
client would send (or a hostile one, frame by frame with hyperframe), the core's
answers are read back by that client."""

from __future__ import annotations

from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.gateway.h2_core import (
    ConnectionEnded,
    H2Core,
    H2Limits,
    Sent,
    StreamCancelled,
    StreamFinished,
    StreamRefused,
    StreamRequest,
)

GET = [(b":method", b"GET"), (b":path", b"/x?a=1"), (b":scheme", b"http"),
       (b":authority", b"example.test")]
DATE = b"Sun, 22 Nov 2026 09:00:00 GMT"


class Client:
    """An h2 client wired to a core, with a clock the test moves."""

    def __init__(self, limits: H2Limits | None = None, **settings: int) -> None:
        self.core = H2Core(limits or H2Limits(), tls=False)
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings({getattr(SettingCodes, k): v for k, v in settings.items()})
        self.now = 0.0
        self.events: list[Any] = []  # what the client saw
        self.send()

    def send(self, raw: bytes = b"") -> list[Any]:
        """Whatever the client has queued (and `raw`) to the core; the core's answer
        back to the client. Returns the core's events."""
        out = self.core.receive_data(self.h2.data_to_send() + raw, self.now)
        self.read()
        return out

    def read(self) -> None:
        data = self.core.data_to_send()
        if data:
            self.events += self.h2.receive_data(data)
            extra = self.h2.data_to_send()  # SETTINGS acks and the like, back again
            if extra:
                self.core.receive_data(extra, self.now)

    def request(self, headers: list[tuple[bytes, bytes]] = GET, body: bytes = b"") -> int:
        sid: int = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, headers, end_stream=not body)
        if body:
            self.h2.send_data(sid, body, end_stream=True)
        return sid

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def test_a_request_becomes_one_event_with_http11_fields() -> None:
    c = Client()
    sid = c.request([*GET, (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"x-y", b"z")])
    (req,) = c.send()
    assert req == StreamRequest(sid, "GET", "/x?a=1", [
        ("host", "example.test"), ("x-y", "z"), ("cookie", "a=1; b=2")], b"", "http")


def test_a_body_in_parts_is_gathered_and_acknowledged() -> None:
    c = Client()
    sid = c.h2.get_next_available_stream_id()
    c.h2.send_headers(sid, [(b":method", b"POST"), *GET[1:]])
    c.h2.send_data(sid, b"a" * 10)
    assert c.send() == []
    c.h2.send_data(sid, b"b" * 5, end_stream=True)
    (req,) = c.send()
    assert req.body == b"a" * 10 + b"b" * 5 and c.core.buffered == 0


def test_a_response_head_and_body_reach_the_client() -> None:
    c = Client()
    sid = c.request()
    c.send()
    c.core.respond(sid, 200, b"content-type: text/plain\r\nConnection: close\r\n", DATE,
                   content_length=5, end=False)
    assert c.core.send_body(sid, b"hello", True, 0.0) == [Sent(sid, 5), StreamFinished(sid)]
    c.read()
    (head,) = c.of(ResponseReceived)
    assert head.headers == [(b":status", b"200"), (b"server", b"cluster"), (b"date", DATE),
                            (b"content-type", b"text/plain"), (b"content-length", b"5")]
    assert [e.data for e in c.of(DataReceived)] == [b"hello"]
    assert [e.stream_id for e in c.of(StreamEnded)] == [sid]
    assert c.core.idle is False  # its request is still counted at a worker
    c.core.finish_request()
    assert c.core.idle


def test_a_shut_window_holds_the_body_and_stalled_finds_it() -> None:
    c = Client(INITIAL_WINDOW_SIZE=0)
    sid = c.request()
    c.send()
    c.core.respond(sid, 200, b"", DATE, content_length=None, end=False)
    c.now = 1.0
    assert c.core.send_body(sid, b"x" * 100, True, c.now) == []  # nothing may go
    assert c.core.stalled(1.5, 1.0) == [] and c.core.stalled(2.5, 1.0) == [sid]
    c.now = 2.0
    c.h2.increment_flow_control_window(60, sid)
    events = c.send()
    assert Sent(sid, 60) in events and c.core.stalled(2.5, 1.0) == []
    c.h2.increment_flow_control_window(40, sid)
    assert StreamFinished(sid) in c.send()
    assert b"".join(e.data for e in c.of(DataReceived)) == b"x" * 100


def test_a_body_over_the_limit_is_refused_on_its_stream_only() -> None:
    c = Client(H2Limits(max_body=100))
    sid = c.h2.get_next_available_stream_id()
    c.h2.send_headers(sid, [(b":method", b"POST"), *GET[1:]])
    c.h2.send_data(sid, b"a" * 101)
    assert c.send() == [StreamRefused(sid, 413, "a body over 100 bytes")]
    other = c.request()
    assert [type(e) for e in c.send()] == [StreamRequest] and other != sid


@pytest.mark.parametrize(("headers", "status"), [
    ([*GET, *[(b"x-%d" % i, b"v") for i in range(101)]], 431),
    ([(b":method", b"CONNECT"), (b":authority", b"example.test:443")], 501),
    ([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"gopher"),
      (b":authority", b"a")], 400),
    ([*GET[:3], (b":authority", b"bad host")], 400),
    *[([(b":method", b"GET"), (b":path", b"/a" + bytes([c]) + b"b"), *GET[2:]], 400)
      for c in (0x1b, 0x08, 0x7f, 0x07, 0x20)],
    *[([*GET, (b"x-a", b"v" + bytes([c]) + b"w")], 400) for c in (0x1b, 0x08, 0x7f, 0x07)],
    ([(b":method", b"POST"), *GET[1:], (b"content-length", b"1048577")], 413),
])
def test_requests_refused_on_their_stream(headers: list[tuple[bytes, bytes]],
                                          status: int) -> None:
    c = Client()
    sid = c.request(headers)
    (refused,) = c.send()
    assert isinstance(refused, StreamRefused) and (refused.stream_id, refused.status) == \
        (sid, status)
    assert c.core.inbound == {}  # it ended; nothing of it stays
    c.request()
    assert [type(e) for e in c.send()] == [StreamRequest]


def test_a_declared_body_over_the_limit_is_refused_before_any_of_it_arrives() -> None:
    c = Client(H2Limits(max_body=100))
    sid = c.h2.get_next_available_stream_id()
    c.h2.send_headers(sid, [(b":method", b"POST"), *GET[1:], (b"content-length", b"101")])
    assert c.send() == [StreamRefused(sid, 413, "content-length 101 over 100")]


def test_a_tab_in_a_value_is_a_value() -> None:
    c = Client()
    c.request([*GET, (b"x-a", b"v\tw")])
    (req,) = c.send()
    assert ("x-a", "v\tw") in req.headers


def test_a_header_list_over_the_limit_ends_the_connection() -> None:
    c = Client(H2Limits(max_header_bytes=1024))
    c.request([*GET, (b"x-big", b"v" * 2000)])
    (ended,) = c.send()
    assert isinstance(ended, ConnectionEnded) and ended.abusive
    (goaway,) = c.of(ConnectionTerminated)
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_an_hpack_table_larger_than_ours_ends_the_connection() -> None:
    c = Client()
    c.h2.encoder.header_table_size = 65536  # announces it in the next header block
    c.request()
    (ended,) = c.send()
    assert isinstance(ended, ConnectionEnded)
    assert c.of(ConnectionTerminated)[0].error_code == ErrorCodes.PROTOCOL_ERROR


def test_a_reset_stream_keeps_its_slot_while_its_work_runs() -> None:
    c = Client(H2Limits(max_streams=3))
    sids = [c.request() for _ in range(3)]
    assert [e.stream_id for e in c.send() if isinstance(e, StreamRequest)] == sids
    c.h2.reset_stream(sids[0])  # h2 counts it closed; its worker is still at it
    assert c.send() == [StreamCancelled(sids[0])]
    late = c.request()
    c.send()
    assert [(e.stream_id, e.error_code) for e in c.of(StreamReset)] == \
        [(late, ErrorCodes.REFUSED_STREAM)]
    c.core.finish_request()  # the worker is done with it
    c.request()
    assert [type(e) for e in c.send()] == [StreamRequest]


def test_more_streams_than_our_settings_allow_is_a_protocol_error() -> None:
    c = Client(H2Limits(max_streams=3))
    assert c.h2.remote_settings.max_concurrent_streams == 3  # what we said
    encoder = Encoder()  # a client that ignores it, writing its own frames
    frames = [HeadersFrame(sid, data=encoder.encode(GET), flags=["END_HEADERS"])
              for sid in (1, 3, 5, 7)]
    events = c.send(b"".join(f.serialize() for f in frames))
    assert [type(e) for e in events] == [ConnectionEnded]
    assert c.of(ConnectionTerminated)[0].error_code == ErrorCodes.PROTOCOL_ERROR


def test_rapid_reset_gets_goaway() -> None:
    c = Client(H2Limits(max_resets=10))
    ended = []
    for _ in range(11):
        sid = c.request()
        c.h2.reset_stream(sid)
        ended += [e for e in c.send() if isinstance(e, ConnectionEnded)]
        c.core.finish_request()
    assert len(ended) == 1 and ended[0].abusive and "rapid reset" in ended[0].reason
    assert c.of(ConnectionTerminated)[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM


@pytest.mark.parametrize("frame", [PingFrame(0, opaque_data=b"12345678"), SettingsFrame(0)],
                         ids=["ping", "settings"])
def test_control_frame_floods_get_goaway(frame: Any) -> None:
    c = Client(H2Limits(max_control=50))
    events = c.send(frame.serialize() * 60)
    assert any(isinstance(e, ConnectionEnded) and e.abusive for e in events)
    assert c.of(ConnectionTerminated)[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_the_budget_renews_with_time() -> None:
    c = Client(H2Limits(max_control=50))
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    for second in range(5):
        c.now = second * 11.0
        assert c.send(ping * 40) == []


def test_a_continuation_flood_ends_the_connection() -> None:
    c = Client()
    head = HeadersFrame(1, data=b"")  # no END_HEADERS: CONTINUATION frames must follow
    flood = b"".join(ContinuationFrame(1, data=b"").serialize() for _ in range(100))
    (ended,) = c.send(head.serialize() + flood)
    assert isinstance(ended, ConnectionEnded)
    assert c.of(ConnectionTerminated)[0].error_code == ErrorCodes.PROTOCOL_ERROR


def test_request_bodies_held_beyond_the_budget_wait_for_acknowledgement() -> None:
    c = Client(H2Limits(max_buffered=1000, max_body=100_000))
    sid = c.h2.get_next_available_stream_id()
    c.h2.send_headers(sid, [(b":method", b"POST"), *GET[1:]])
    c.h2.send_data(sid, b"a" * 16000)
    c.h2.send_data(sid, b"a" * 16000)
    c.h2.send_data(sid, b"a" * 16000)
    c.send()
    # Past the budget nothing is acknowledged: the client's window stays shut.
    assert c.core.held_acks == [(sid, 16000)] * 3
    assert c.h2.outbound_flow_control_window == 65535 - 48000
    c.h2.send_data(sid, b"", end_stream=True)
    (req,) = c.send()  # handed on: its bytes released, the window opened again
    assert len(req.body) == 48000 and c.core.held_acks == []
    assert c.h2.outbound_flow_control_window == 65535


def test_draining_refuses_new_streams_then_says_goaway_once_idle() -> None:
    c = Client()
    sid = c.request()
    c.send()
    c.core.goaway()
    assert not c.of(ConnectionTerminated)  # still answering sid
    late = c.request()
    c.send()
    assert (late, ErrorCodes.REFUSED_STREAM) in [(e.stream_id, e.error_code)
                                                 for e in c.of(StreamReset)]
    c.core.respond(sid, 204, b"", DATE, content_length=None, end=True)
    c.core.finish_request()
    c.core.goaway()
    c.read()
    (goaway,) = c.of(ConnectionTerminated)
    assert goaway.error_code == ErrorCodes.NO_ERROR and goaway.last_stream_id == late


OPS = ["get", "post", "reset", "ping", "respond", "finish", "window", "settings", "time"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(OPS), max_size=60))
def test_any_client_behaviour_keeps_the_core_whole(ops: list[str]) -> None:
    """Whatever a (protocol-abiding) client does in whatever order, the core raises
    nothing, its counts stay sane, and every stream it handed on is answerable."""
    c = Client(H2Limits(max_streams=5, max_resets=20, max_control=20, max_body=1000))
    handed: list[int] = []
    open_ids: list[int] = []
    for op in ops:
        if c.core.ended or c.h2.state_machine.state.name == "CLOSED":
            break
        try:
            if op in ("get", "post") and c.h2.open_outbound_streams < 5:
                open_ids.append(c.request(body=b"b" * 600 if op == "post" else b""))
            elif op == "reset" and open_ids:
                c.h2.reset_stream(open_ids.pop(0))
            elif op == "ping":
                c.h2.ping(b"12345678")
            elif op == "window":
                c.h2.increment_flow_control_window(1000)
            elif op == "settings":
                c.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 100})
        except Exception as exc:  # the client's own refusals (closed streams)
            assert type(exc).__module__.startswith("h2")
        events = c.send()
        handed += [e.stream_id for e in events if isinstance(e, StreamRequest)]
        if op == "respond" and handed:
            sid = handed.pop(0)
            c.core.respond(sid, 200, b"x-a: b\r\n", DATE, content_length=None, end=False)
            c.core.send_body(sid, b"r" * 300, True, c.now)
            c.core.finish_request()
        elif op == "finish" and handed:
            handed.pop(0)
            c.core.finish_request()
        elif op == "time":
            c.now += 20
        c.read()
        assert c.core.at_workers >= 0 and c.core.buffered >= 0


def test_after_a_413_the_rest_of_the_upload_is_dropped_then_the_stream_ends_cleanly() -> None:
    c = Client(H2Limits(max_body=100))
    c.h2.increment_flow_control_window(10_000_000)
    c.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    c.send()
    sid = c.h2.get_next_available_stream_id()
    c.h2.send_headers(sid, [(b":method", b"POST"), *GET[1:], (b"content-length", b"5000")])
    assert c.send() == [StreamRefused(sid, 413, "content-length 5000 over 100")]
    for _ in range(5):  # the client goes on with what it declared
        c.h2.send_data(sid, b"x" * 1000)
    c.h2.end_stream(sid)
    assert c.send() == [] and c.core.buffered == 0 and sid not in c.core.inbound
    assert c.of(StreamReset) == [] and c.core.budget.held == 0


def test_a_client_that_sends_on_and_on_after_a_413_is_reset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.gateway import h2_core
    monkeypatch.setattr(h2_core, "DISCARD_LIMIT", 3000)
    c = Client(H2Limits(max_body=100))
    sid = c.h2.get_next_available_stream_id()
    c.h2.send_headers(sid, [(b":method", b"POST"), *GET[1:]])
    c.h2.send_data(sid, b"x" * 101)
    assert [e.status for e in c.send()] == [413]  # type: ignore[attr-defined]
    for _ in range(4):
        c.h2.send_data(sid, b"x" * 1000)
        c.send()
    assert [(e.stream_id, e.error_code) for e in c.of(StreamReset)] == [(sid, ErrorCodes.NO_ERROR)]
