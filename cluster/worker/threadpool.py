"""A thread pool for synchronous handlers that wakes the event loop once per batch.

`run_in_executor` costs a future and a loop wake-up per call. Here threads take
jobs from one queue and put results on a deque; the first result after a drain
schedules one `call_soon_threadsafe`, and that drain takes every result ready by
then. A slow handler holds only its own thread.

`--threads` bounds the handlers that run at once, not the threads: a handler that
blocks on the cluster (a state write waiting for its commit, `members()` waiting for
the gateways) lends its slot while it waits (`wait_lent`), and the pool starts
another thread for the next request if none is free, up to `ceiling` (the requests a
worker may hold). Without that, 8 threads waiting for commits would leave the worker
idle with requests queued: a sync handler's rate would be set by the commit's round
trip, not by CPU. A thread started so exits after IDLE_EXIT seconds without work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)


class Emitter(Protocol[T_contra]):
    """Where a job hands its results: the pool (from its threads, to the loop), or the
    pool's taker itself for a job run on the loop."""

    def emit(self, result: T_contra) -> None: ...


Job = Callable[[Emitter[T]], None]  # a job runs with the emitter its results go to

log = logging.getLogger("cluster.worker.pool")

IDLE_EXIT = 10.0  # seconds a thread beyond --threads waits for a job before it exits

# The pool whose thread this is (unset on other threads): what `wait_lent` lends from.
_this_thread = threading.local()


class ResultTaker(Protocol[T]):
    """Who takes the pool's results on the loop (the worker's `NativeRunner`)."""

    def on_results(self, batch: list[T]) -> None: ...


class ThreadPool(Generic[T]):
    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int,
                 taker: ResultTaker[T], ceiling: int = 0,
                 idle_exit: float = IDLE_EXIT) -> None:
        self.loop = loop
        self.taker = taker
        self._jobs: queue.SimpleQueue[Job[T] | None] = queue.SimpleQueue()
        self._results: deque[T] = deque()
        self._wake_pending = False
        self.threads = threads  # handlers running at once
        self.ceiling = max(threads, ceiling)  # threads alive at once
        self.idle_exit = idle_exit
        # One lock for the counts, taken twice a job; the condition is waited on only
        # when every slot is taken, which needs a lent slot to happen.
        self._lock = threading.Lock()
        self._slot_free = threading.Condition(self._lock)
        self._running = 0  # threads holding a slot
        self._wanting = 0  # threads waiting for a slot
        self._idle = 0  # threads waiting for a job
        self.lent = 0  # threads blocked on the cluster, their slots lent
        self._alive: set[threading.Thread] = set()
        self._closed = False
        self._named = 0
        self.started = 0  # threads started beyond --threads, ever
        with self._lock:
            for _ in range(threads):
                self._start_thread()

    def _start_thread(self) -> None:
        """With the lock held."""
        self._named += 1
        thread = threading.Thread(target=self._work, name=f"handler-{self._named}",
                                  daemon=True)
        self._alive.add(thread)
        thread.start()

    @property
    def alive(self) -> int:
        return len(self._alive)

    def submit(self, job: Job[T]) -> None:
        self._jobs.put(job)
        if self.lent:  # a slot is free while its thread waits: is a thread free to run it?
            with self._lock:
                self._grow()

    def _grow(self) -> None:
        """With the lock held. Threads neither idle nor lent hold a slot or want one:
        start a thread only when a slot would otherwise stay free with a job queued."""
        if self._idle == 0 and len(self._alive) - self.lent < self.threads \
                and len(self._alive) < self.ceiling and not self._closed \
                and not self._jobs.empty():
            self.started += 1
            self._start_thread()

    def _take_slot(self) -> None:
        """With the lock held."""
        while self._running >= self.threads:
            self._wanting += 1
            self._slot_free.wait()
            self._wanting -= 1
        self._running += 1

    def _give_slot(self) -> None:
        """With the lock held."""
        self._running -= 1
        if self._wanting:
            self._slot_free.notify()

    def wait(self, future: Future[R], timeout: float) -> R:
        """On one of this pool's threads: block on `future`, its slot lent meanwhile."""
        with self._lock:
            self.lent += 1
            self._give_slot()
            self._grow()
        try:
            return future.result(timeout)
        finally:
            with self._lock:  # back to running Python: a slot again
                self.lent -= 1
                self._take_slot()

    def emit(self, result: T) -> None:
        """From a pool thread: hand a result to the loop."""
        self._results.append(result)
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(RuntimeError):  # a closed loop: shutting down
                self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        # Reset first: a result appended from now on schedules another drain.
        self._wake_pending = False
        results = self._results
        batch = []
        while results:
            batch.append(results.popleft())
        if batch:
            self.taker.on_results(batch)

    def _work(self) -> None:
        _this_thread.pool = self
        lock = self._lock
        with lock:
            self._idle += 1
        while True:
            # Read unlocked: a thread beyond --threads waits for work only so long.
            extra = len(self._alive) > self.threads
            try:
                job = self._jobs.get(timeout=self.idle_exit) if extra else self._jobs.get()
            except queue.Empty:
                job = None
            with lock:
                if job is not None:
                    self._idle -= 1
                    self._take_slot()
                elif self._closed or len(self._alive) > self.threads:
                    self._idle -= 1
                    self._alive.discard(threading.current_thread())
                    return
            if job is None:
                continue  # idle too long, but one of the --threads that stay
            try:
                job(self)
            except Exception:  # a job reports its own errors; this is the last guard
                log.exception("handler job failed outside its own error handling")
            finally:
                with lock:
                    self._give_slot()
                    self._idle += 1

    def shutdown(self, timeout: float) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._alive)
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join(timeout)


def wait_lent(future: Future[R], timeout: float) -> R:
    """Block on `future` for at most `timeout` seconds. On a handler thread of a pool,
    its slot is lent meanwhile, so another handler may run (see the module's text)."""
    pool: ThreadPool[object] | None = getattr(_this_thread, "pool", None)
    if pool is None:
        return future.result(timeout)
    return pool.wait(future, timeout)
