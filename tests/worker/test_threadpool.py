"""The sync handlers' pool: `--threads` handlers run at once, and a handler blocked on
the cluster lends its slot, so the next request starts on another thread (up to the
ceiling), and those extra threads go once the work is gone. Real threads, a real loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from cluster.worker.threadpool import Emitter, ThreadPool, wait_lent
from tests.harness import wait_for

DEADLINE = 10.0


class Taker:
    def __init__(self) -> None:
        self.results: list[Any] = []

    def on_results(self, batch: list[Any]) -> None:
        self.results.extend(batch)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(DEADLINE)
    loop.close()


class Gauge:
    """How many jobs run Python at once (not counting those blocked in wait_lent)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def test_a_handler_waiting_on_the_cluster_lends_its_slot(
        loop: asyncio.AbstractEventLoop) -> None:
    taker = Taker()
    pool: ThreadPool[Any] = ThreadPool(loop, 2, taker, ceiling=6, idle_exit=0.2)
    answers = [Future[int]() for _ in range(6)]
    running = Gauge()

    def job(i: int) -> Callable[[Emitter[Any]], None]:
        def run(out: Emitter[Any]) -> None:
            with running:
                pass
            got = wait_lent(answers[i], DEADLINE)  # as a state write waits for its commit
            with running:  # held a while, so that handlers back from the wait overlap
                time.sleep(0.01)
            out.emit((i, got))
        return run

    try:
        for i in range(6):
            pool.submit(job(i))
        # All six wait at once, on 2 --threads: 4 threads were started for them.
        wait_for(lambda: pool.lent == 6, DEADLINE, "six handlers waiting")
        assert pool.alive == 6 and pool.started == 4
        for i, answer in enumerate(answers):
            answer.set_result(i * 10)
        wait_for(lambda: len(taker.results) == 6, DEADLINE, "six results")
        assert sorted(taker.results) == [(i, i * 10) for i in range(6)]
        assert running.most <= 2  # back from the wait, each took a slot again
        wait_for(lambda: pool.alive == 2, DEADLINE, "the extra threads to exit when idle")
    finally:
        pool.shutdown(DEADLINE)
    assert pool.alive == 0


def test_the_ceiling_bounds_the_threads(loop: asyncio.AbstractEventLoop) -> None:
    taker = Taker()
    pool: ThreadPool[Any] = ThreadPool(loop, 1, taker, ceiling=3)
    gate = Future[None]()

    def run(out: Emitter[Any]) -> None:
        wait_lent(gate, DEADLINE)
        out.emit(1)

    try:
        for _ in range(5):
            pool.submit(run)
        wait_for(lambda: pool.lent == 3, DEADLINE, "three handlers waiting")
        assert pool.alive == 3  # the other two jobs wait in the queue
        gate.set_result(None)
        wait_for(lambda: len(taker.results) == 5, DEADLINE, "five results")
    finally:
        pool.shutdown(DEADLINE)


def test_handlers_that_do_not_wait_run_threads_at_a_time(
        loop: asyncio.AbstractEventLoop) -> None:
    taker = Taker()
    pool: ThreadPool[Any] = ThreadPool(loop, 3, taker, ceiling=64)
    running = Gauge()

    def run(out: Emitter[Any]) -> None:
        with running:  # held a while, so that 40 jobs on 3 threads overlap
            time.sleep(0.005)
        out.emit(1)

    try:
        for _ in range(40):
            pool.submit(run)
        wait_for(lambda: len(taker.results) == 40, DEADLINE, "forty results")
        assert running.most <= 3 and pool.alive == 3 and pool.started == 0
    finally:
        pool.shutdown(DEADLINE)


def test_off_a_pool_thread_wait_lent_is_a_plain_wait() -> None:
    answer = Future[str]()
    answer.set_result("done")
    assert wait_lent(answer, 1.0) == "done"
    with pytest.raises(TimeoutError):
        wait_lent(Future[str](), 0.01)
