"""Credit-based dispatch without sockets: a fake pump records what would be sent, a
clock the test moves decides the deadlines."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.gateway.dispatch import Dispatcher
from cluster.gateway.exchange import Exchange
from cluster.plumbing import wire
from cluster.plumbing.response_parts import Abort, ResponseHead, ResponsePart


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now


class Pump:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict[str, Any]]] = []

    def post(self, msg: dict[str, Any], to: bytes | None = None) -> None:
        assert to is not None
        self.sent.append((to, msg))

    def flush(self) -> None:
        pass

    def requests_to(self, worker: bytes) -> list[int]:
        return [m["id"] for w, m in self.sent if w == worker and m["k"] == wire.REQUEST]


class Sink:
    def __init__(self) -> None:
        self.closed = False
        self.parts: list[ResponsePart] = []
        self.errors: list[int] = []

    def deliver(self, ex: Exchange, part: ResponsePart) -> None:
        self.parts.append(part)

    def deliver_error(self, ex: Exchange, status: int,
                      headers: list[tuple[str, str]] | None = None) -> None:
        self.errors.append(status)


def body_of(part: ResponsePart) -> bytes:
    assert not isinstance(part, Abort)
    return part.body


def status_of(part: ResponsePart) -> object:
    assert isinstance(part, ResponseHead)
    return part.status


class Setup:
    def __init__(self, max_queue: int = 10) -> None:
        self.clock = Clock()
        self.pump = Pump()
        self.d = Dispatcher(self.clock, "gw", request_timeout=5, peer_expiry=3,  # type: ignore[arg-type]
                            max_queue=max_queue, defer_timeout=60)
        self.d.pump = self.pump

    def hello(self, worker: bytes, credit: int) -> None:
        self.d.on_messages(worker, [wire.envelope(wire.HELLO, id=worker.decode().split("@")[0],
                                                  credit=credit)])

    def request(self, method: str = "GET") -> tuple[Exchange, Sink]:
        sink = Sink()
        ex = Exchange({"k": wire.REQUEST, "id": 0, "method": method}, method, "1.1", True, sink)
        self.d.submit(ex)
        return ex, sink

    def answer(self, worker: bytes, rid: int, more: bool = False) -> None:
        self.d.on_messages(worker, [wire.envelope(wire.RESPONSE, id=rid, more=more,
                                                  status=200, head=b"", body=b"ok")])


@pytest.fixture
def s() -> Setup:
    return Setup()


def test_no_worker_is_503_at_once(s: Setup) -> None:
    _, sink = s.request()
    assert sink.errors == [503]


def test_requests_go_to_the_worker_with_fewest_in_flight(s: Setup) -> None:
    s.hello(b"a@gw", 10)
    s.hello(b"b@gw", 10)
    assert [to for to, m in s.pump.sent if m["k"] == wire.WELCOME] == [b"a@gw", b"b@gw"]
    for _ in range(4):
        s.request()
    assert len(s.pump.requests_to(b"a@gw")) == 2 and len(s.pump.requests_to(b"b@gw")) == 2


def test_without_credit_requests_wait_and_go_when_credit_returns(s: Setup) -> None:
    s.hello(b"a@gw", 1)
    first, sink = s.request()
    second, _ = s.request()
    assert s.pump.requests_to(b"a@gw") == [first.id] and list(s.d.waiting) == [second]
    s.answer(b"a@gw", first.id)
    assert body_of(sink.parts[0]) == b"ok"
    assert s.pump.requests_to(b"a@gw") == [first.id, second.id] and not s.d.waiting


def test_a_stream_keeps_its_credit_until_its_last_part(s: Setup) -> None:
    s.hello(b"a@gw", 1)
    ex, sink = s.request()
    _queued, _ = s.request()
    s.answer(b"a@gw", ex.id, more=True)
    assert len(s.pump.requests_to(b"a@gw")) == 1
    s.answer(b"a@gw", ex.id)
    assert len(s.pump.requests_to(b"a@gw")) == 2 and len(sink.parts) == 2


def test_a_full_queue_is_503() -> None:
    small = Setup(max_queue=1)
    small.hello(b"a@gw", 1)
    small.request()
    small.request()
    _, third = small.request()
    assert third.errors == [503]


def test_past_the_deadline_is_504_and_a_late_answer_still_returns_credit(s: Setup) -> None:
    s.hello(b"a@gw", 1)
    ex, sink = s.request()
    s.clock.now += 6
    s.d.expire()
    assert sink.errors == [504] and ex.id not in s.d.pending
    s.answer(b"a@gw", ex.id)  # late: discarded, counted, credit back
    assert s.d.late_replies == 1 and s.d.workers[b"a@gw"].credit == 1


def test_waiting_too_long_is_503(s: Setup) -> None:
    s.hello(b"a@gw", 1)
    s.request()
    _, waiting = s.request()
    s.clock.now += 6
    s.d.expire()
    assert waiting.errors == [503]


def test_a_dropped_worker_retries_gets_and_fails_posts(s: Setup) -> None:
    s.hello(b"a@gw", 5)
    get, get_sink = s.request("GET")
    _post, post_sink = s.request("POST")
    s.hello(b"b@gw", 5)
    s.d.drop_worker(b"a@gw", "missed its heartbeats")
    assert post_sink.errors == [502] and not get_sink.errors
    assert s.pump.requests_to(b"b@gw") == [get.id] and get.retried


def test_a_silent_worker_is_dropped_at_heartbeat(s: Setup) -> None:
    s.hello(b"a@gw", 5)
    s.clock.now += 4
    s.d.heartbeat()
    assert b"a@gw" not in s.d.workers


def test_a_draining_worker_gets_nothing_new(s: Setup) -> None:
    s.hello(b"a@gw", 5)
    s.hello(b"b@gw", 5)
    s.hello(b"a@gw", 0)  # HELLO with credit 0: draining
    assert s.d.live_workers() == [(b"b@gw", "b")] and s.d.serving() == 1
    for _ in range(3):
        s.request()
    assert s.pump.requests_to(b"a@gw") == [] and len(s.pump.requests_to(b"b@gw")) == 3
    s.d.on_messages(b"a@gw", [wire.envelope(wire.BYE, id="a")])
    assert b"a@gw" not in s.d.workers


def test_a_deferred_request_frees_credit_and_takes_any_workers_reply(s: Setup) -> None:
    s.hello(b"a@gw", 1)
    ex, sink = s.request()
    s.d.on_messages(b"a@gw", [wire.envelope(wire.DEFERRED, id=ex.id)])
    assert s.d.workers[b"a@gw"].credit == 1 and ex.id in s.d.deferred
    s.hello(b"b@gw", 1)
    s.d.on_messages(b"b@gw", [wire.envelope(wire.DEFERRED_REPLY, id=ex.id, status=201,
                                         head=b"", body=b"later")])
    assert status_of(sink.parts[0]) == 201 and not s.d.deferred


def test_a_reply_that_overtakes_the_deferral_answers_and_the_credit_still_returns(
        s: Setup) -> None:
    """reply() from worker b can reach the gateway before worker a's DEFERRED (two
    links, no order between them); it used to be dropped, the client left waiting."""
    s.hello(b"a@gw", 1)
    s.hello(b"b@gw", 1)
    ex, sink = s.request()
    worker = ex.worker
    other = b"b@gw" if worker == b"a@gw" else b"a@gw"
    s.d.on_messages(other, [wire.envelope(wire.DEFERRED_REPLY, id=ex.id, status=201,
                                          head=b"", body=b"early")])
    assert status_of(sink.parts[0]) == 201
    s.d.on_messages(other, [wire.envelope(wire.DEFERRED_REPLY, id=ex.id, status=202,
                                          head=b"", body=b"twice")])
    assert len(sink.parts) == 1  # one answer only
    assert worker is not None and s.d.workers[worker].credit == 0
    s.d.on_messages(worker, [wire.envelope(wire.DEFERRED, id=ex.id)])
    assert s.d.workers[worker].credit == 1 and not s.d.deferred and not s.d.replied_early
    s.clock.now += 100
    s.d.expire()
    assert sink.errors == []  # no 504 after the answer


def test_an_early_reply_whose_worker_never_defers_is_not_504(s: Setup) -> None:
    s.hello(b"a@gw", 1)
    ex, sink = s.request()
    s.d.on_messages(b"a@gw", [wire.envelope(wire.DEFERRED_REPLY, id=ex.id, status=200,
                                         head=b"", body=b"early")])
    s.clock.now += 10
    s.d.expire()
    assert sink.errors == [] and not s.d.replied_early
    s.d.on_messages(b"a@gw", [wire.envelope(wire.DEFERRED, id=ex.id)])  # late: credit back
    assert s.d.workers[b"a@gw"].credit == 1


def test_an_unknown_worker_heartbeat_is_asked_who_it_is(s: Setup) -> None:
    s.d.on_messages(b"z@gw", [wire.envelope(wire.HEARTBEAT, id="z")])
    assert s.pump.sent == [(b"z@gw", wire.envelope(wire.WHO))]


def test_a_closed_client_waiting_is_skipped(s: Setup) -> None:
    s.hello(b"a@gw", 1)
    first, _ = s.request()
    _gone, gone_sink = s.request()
    gone_sink.closed = True
    s.answer(b"a@gw", first.id)
    assert s.pump.requests_to(b"a@gw") == [first.id] and not s.d.waiting


def test_messages_meant_for_a_gateway_that_was_here_before_are_dropped() -> None:
    """A worker's socket for a dead gateway reconnects to whatever listens at its
    endpoint next: its identity names the old gateway, and nothing of it is acted on."""
    s = Setup()
    s.d.on_messages(b"a@gw-old", [wire.envelope(wire.HELLO, id="a", credit=5)])
    assert s.pump.sent == [] and s.d.workers == {} and s.d.stale_frames == 1
