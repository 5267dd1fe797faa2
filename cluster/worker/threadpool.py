"""A thread pool for synchronous handlers that wakes the event loop once per batch.

`run_in_executor` costs a future and a loop wake-up per call. Here threads take
jobs from one queue and put results on a deque; the first result after a drain
schedules one `call_soon_threadsafe`, and that drain takes every result ready by
then. A slow handler holds only its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class Emitter(Protocol[T_contra]):
    """Where a job hands its results: the pool (from its threads, to the loop), or the
    pool's taker itself for a job run on the loop."""

    def emit(self, result: T_contra) -> None: ...


Job = Callable[[Emitter[T]], None]  # a job runs with the emitter its results go to

log = logging.getLogger("cluster.worker.pool")


class ResultTaker(Protocol[T]):
    """Who takes the pool's results on the loop (the worker's `NativeRunner`)."""

    def on_results(self, batch: list[T]) -> None: ...


class ThreadPool(Generic[T]):
    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int,
                 taker: ResultTaker[T]) -> None:
        self.loop = loop
        self.taker = taker
        self._jobs: queue.SimpleQueue[Job[T] | None] = queue.SimpleQueue()
        self._results: deque[T] = deque()
        self._wake_pending = False
        self._threads = [threading.Thread(target=self._work, name=f"handler-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job[T]) -> None:
        self._jobs.put(job)

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
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job(self)
            except Exception:  # a job reports its own errors; this is the last guard
                log.exception("handler job failed outside its own error handling")

    def shutdown(self, timeout: float) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)
