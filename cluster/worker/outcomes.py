"""What handlers did, recorded from the handler's own thread (sync handlers run in a
pool) into a ShardedHistogram: per-thread rows, no lock. The runners record into it;
the worker's metrics (metrics.py) read it when Prometheus scrapes."""

from __future__ import annotations

from prometheus_client import Counter

from cluster.plumbing.histogram import ShardedHistogram
from cluster.plumbing.metrics import new_registry

HANDLER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class HandlerOutcomes:
    """Outcomes by (route, status), and what handlers raised, by route and type. Its
    registry is the worker's: the other metrics join it."""

    def __init__(self) -> None:
        self.registry = new_registry()
        # Outcomes by (route, status): the request counter and, summed over status,
        # the handler latency histogram.
        self.latency = ShardedHistogram(HANDLER_BUCKETS)
        self.exceptions = Counter("cluster_worker_exceptions",
                                  "Exceptions raised by handlers, by route and type",
                                  ["route", "type"], registry=self.registry)
        # record((route, status), seconds): the histogram's own method, no wrapper.
        self.record = self.latency.observe

    def failed(self, route: str, exc: BaseException) -> None:
        self.exceptions.labels(route, type(exc).__name__).inc()
