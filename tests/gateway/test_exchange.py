"""An exchange's state: it changes only through its own methods, by its table."""

from __future__ import annotations

import pytest

from cluster.gateway.exchange import AT_WORKER, DONE, QUEUED, STARTED, Exchange
from cluster.gateway.framing import body_framing


def exchange(method: str = "GET", version: str = "1.1") -> Exchange:
    return Exchange({}, method, version, True, None)  # type: ignore[arg-type]


def test_a_request_goes_queued_at_a_worker_started_done() -> None:
    ex = exchange()
    assert ex.state == QUEUED and not ex.started and ex.retryable
    ex.sent_to(b"wk-1")
    assert ex.state == AT_WORKER and ex.worker == b"wk-1"
    ex.retry()
    ex.sent_to(b"wk-2")  # its worker left: another takes it, once
    assert ex.state == AT_WORKER and ex.worker == b"wk-2" and not ex.retryable
    ex.start()
    assert ex.state == STARTED and ex.started and not ex.done and not ex.retryable
    ex.finish()
    assert ex.state == DONE and ex.done
    ex.finish()  # again: nothing changes
    assert ex.state == DONE


def test_an_answer_from_the_gateway_itself_needs_no_worker() -> None:
    ex = exchange()
    ex.start()
    ex.finish()
    assert ex.done and ex.worker is None


@pytest.mark.parametrize("step", ["sent_to", "start"])
def test_what_cannot_happen_once_started_is_one_log_line_and_no_change(
        step: str, caplog: pytest.LogCaptureFixture) -> None:
    ex = exchange()
    ex.start()
    if step == "sent_to":
        ex.sent_to(b"wk-1")
    else:
        ex.start()
    assert ex.state == STARTED and ex.worker is None
    (record,) = [r for r in caplog.records if "cannot come" in r.getMessage()]
    assert "started" in record.getMessage()


def test_a_body_that_ends_with_the_connection_means_it_must_close() -> None:
    ex = exchange(version="1.0")
    ex.frame(body_framing("1.0", "GET", 200, 2, True, None))
    assert not ex.keep_alive and not ex.chunked and not ex.head_only
    whole = exchange(version="1.0")
    whole.frame(body_framing("1.0", "GET", 200, 2, False, None))
    assert whole.keep_alive
    ex = exchange()
    ex.must_close()
    assert not ex.keep_alive
