"""Deferred replies: a handler returns DEFER, any worker answers later with reply()."""

from __future__ import annotations

import json
import threading
import time

from tests.harness import cluster, wait_for
from tests.httpclient import Response, get

LONGPOLL = "examples.longpoll:app"


def poll_in_background(port: int, path: str) -> tuple[threading.Thread, list[Response]]:
    out: list[Response] = []
    thread = threading.Thread(target=lambda: out.append(get(port, path, timeout=20)))
    thread.start()
    return thread, out


def test_any_worker_answers_deferred_requests() -> None:
    with cluster() as c:
        gw = c.gateway("--request-timeout", "1")
        c.worker(LONGPOLL)
        c.worker(LONGPOLL)
        port = int(gw.ready["port"])
        polls = [poll_in_background(port, "/poll/news") for _ in range(4)]
        # Longer than the request timeout: deferred requests are not subject to it,
        # and hold no worker credit meanwhile.
        answered = [0]  # the waiters register as they arrive: send until all 4 had it

        def all_answered() -> bool:
            resp = get(port, "/send/news", method="POST", body=b"extra!")
            answered[0] += json.loads(resp.body)["answered"]
            return answered[0] >= 4

        wait_for(all_answered, 10, "the polls to register and be answered")
        for thread, out in polls:
            thread.join(10)
            assert out[0].status == 200 and out[0].body == b"extra!"


def test_deferred_outlives_the_request_timeout() -> None:
    with cluster() as c:
        gw = c.gateway("--request-timeout", "0.5", "--defer-timeout", "10")
        c.worker(LONGPOLL, "--concurrency", "1")
        port = int(gw.ready["port"])
        thread, out = poll_in_background(port, "/poll/slow")
        start = time.monotonic()
        # The only credit is free again, though the poll still waits.
        wait_for(lambda: json.loads(get(port, "/send/nobody", method="POST").body)
                 == {"answered": 0}, 5, "a second request to be served")
        time.sleep(1.0)  # poll: a negative check; time must pass the 0.5 s timeout
        assert not out
        resp = get(port, "/send/slow", method="POST", body=b"late")
        assert json.loads(resp.body) == {"answered": 1}
        thread.join(10)
        assert out[0].status == 200 and out[0].body == b"late"
        assert time.monotonic() - start >= 1.0


def test_unanswered_deferred_request_is_504() -> None:
    with cluster() as c:
        gw = c.gateway("--defer-timeout", "1")
        c.worker(LONGPOLL)
        port = int(gw.ready["port"])
        start = time.monotonic()
        assert get(port, "/poll/silence").status == 504
        assert 1.0 <= time.monotonic() - start < 3.0
        assert "no reply within" in gw.log()
