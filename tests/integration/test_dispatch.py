"""Credit-based dispatch and failure: every request gets exactly one answer."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.harness import cluster, wait_for
from tests.httpclient import Conn, Response, get

APP = "tests.apps.handlers:app"


def in_background(port: int, path: str, method: str = "GET") -> tuple[threading.Thread,
                                                                      list[Response]]:
    out: list[Response] = []
    thread = threading.Thread(target=lambda: out.append(get(port, path, method=method,
                                                            timeout=20)))
    thread.start()
    return thread, out


def test_a_worker_never_gets_more_than_its_credit() -> None:
    with cluster() as c:
        gw = c.gateway()
        c.worker(APP, "--concurrency", "2", "--threads", "8")
        port = int(gw.ready["port"])
        runs = [in_background(port, "/sleep/0.3") for _ in range(6)]
        for thread, _ in runs:
            thread.join(20)
        peaks = [json.loads(out[0].body)["peak"] for _, out in runs]
        assert all(r[1][0].status == 200 for r in runs)
        assert max(peaks) == 2  # 8 threads were free; credit held it to 2


def test_least_loaded_worker_first() -> None:
    with cluster() as c:
        gw = c.gateway()
        c.worker(APP, "--threads", "4")
        c.worker(APP, "--threads", "4")
        port = int(gw.ready["port"])
        wait_for(lambda: gw.log().count("connected with credit") == 2, 5, "both workers")
        # Two slow requests at once must land on two different workers.
        runs = [in_background(port, "/sleep/0.5") for _ in range(2)]
        for thread, _ in runs:
            thread.join(20)
        pids = {json.loads(out[0].body)["pid"] for _, out in runs}
        assert len(pids) == 2


def test_no_worker_is_503_with_retry_after_at_once() -> None:
    with cluster() as c:
        gw = c.gateway()
        start = time.monotonic()
        resp = get(int(gw.ready["port"]), "/")
        assert resp.status == 503 and resp.header("retry-after") == "1"
        assert time.monotonic() - start < 1.0


def test_killed_worker_get_is_retried_post_is_502(tmp_path: Path) -> None:
    with cluster() as c:
        gw = c.gateway()
        victim = c.worker(APP, "--threads", "4")
        port = int(gw.ready["port"])
        mark = tmp_path / "running"
        get_run = in_background(port, f"/sleep/3?mark={mark}")
        post_run = in_background(port, f"/sleep/3?mark={mark}", method="POST")
        wait_for(lambda: mark.exists() and len(mark.read_text().split()) == 2, 5,
                 "both requests running in the victim")
        c.worker(APP, "--threads", "4")  # the survivor
        wait_for(lambda: gw.log().count("connected with credit") == 2, 5, "second worker")
        killed_at = time.monotonic()
        victim.kill()
        post_run[0].join(10)
        assert post_run[1][0].status == 502
        assert time.monotonic() - killed_at < 2.0  # noticed on disconnect, not by expiry
        get_run[0].join(10)
        resp = get_run[1][0]
        assert resp.status == 200 and json.loads(resp.body)["pid"] != victim.pid


def test_worker_stuck_in_python_is_dropped_by_heartbeat() -> None:
    with cluster() as c:
        gw = c.gateway()
        stuck = c.worker(APP)
        port = int(gw.ready["port"])
        import os
        import signal
        os.kill(stuck.pid, signal.SIGSTOP)  # alive for TCP, silent for heartbeats
        try:
            start = time.monotonic()
            wait_for(lambda: "missed its heartbeats" in gw.log(), 5, "heartbeat expiry")
            assert time.monotonic() - start < 0.25 * 3 + 1.0
            assert get(port, "/").status == 503
        finally:
            os.kill(stuck.pid, signal.SIGCONT)
        # Back to life: it says hello again and serves.
        wait_for(lambda: get(port, "/").status == 200, 5, "the worker to come back")


def test_slow_handler_is_504_and_the_late_reply_is_dropped() -> None:
    with cluster() as c:
        gw = c.gateway("--request-timeout", "1")
        c.worker(APP, "--concurrency", "1")
        port = int(gw.ready["port"])
        start = time.monotonic()
        assert get(port, "/asleep/1.6").status == 504
        assert time.monotonic() - start < 1.5
        # The worker is still busy, so this one queues for its credit. Only the late
        # reply (dropped, never written) gives the credit back, within this request's
        # own timeout.
        resp = get(port, "/items/1")
        assert resp.status == 200 and json.loads(resp.body)["id"] == 1


def test_queue_waits_for_credit_then_serves(tmp_path: Path) -> None:
    with cluster() as c:
        gw = c.gateway()
        c.worker(APP, "--concurrency", "1")
        port = int(gw.ready["port"])
        mark = tmp_path / "running"
        first = in_background(port, f"/sleep/0.3?mark={mark}")
        wait_for(mark.exists, 5, "the first request to hold the only credit")
        start = time.monotonic()
        assert get(port, "/items/2").status == 200  # waited for the credit
        assert time.monotonic() - start >= 0.1
        first[0].join(10)


def test_queue_full_is_503() -> None:
    with cluster() as c:
        gw = c.gateway("--max-queue", "1")
        c.worker(APP, "--concurrency", "1")
        port = int(gw.ready["port"])
        runs = [in_background(port, "/sleep/0.5") for _ in range(4)]
        for thread, _ in runs:
            thread.join(20)
        statuses = sorted(out[0].status for _, out in runs)
        assert statuses.count(200) >= 2 and 503 in statuses


def test_client_gone_before_the_answer_costs_nothing() -> None:
    with cluster() as c:
        gw = c.gateway()
        c.worker(APP, "--concurrency", "1")
        port = int(gw.ready["port"])
        conn = Conn(port)
        conn.send(b"GET /sleep/0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
        conn.close()
        assert get(port, "/items/1").status == 200  # credit came back
        assert "Traceback" not in gw.log()


@pytest.mark.parametrize("prefetch", ["0", "1"])
def test_prefetch_adds_credit_not_concurrency(prefetch: str) -> None:
    with cluster() as c:
        gw = c.gateway()
        c.worker(APP, "--concurrency", "1", "--prefetch", prefetch, "--threads", "4")
        port = int(gw.ready["port"])
        wait_for(lambda: f"connected with credit {1 + int(prefetch)}" in gw.log(), 5,
                 "the worker's hello")
        runs = [in_background(port, "/sleep/0.2") for _ in range(3)]
        for thread, _ in runs:
            thread.join(20)
        assert all(out[0].status == 200 for _, out in runs)
        # Prefetched requests wait in the worker: never two running at once.
        assert max(json.loads(out[0].body)["peak"] for _, out in runs) == 1
