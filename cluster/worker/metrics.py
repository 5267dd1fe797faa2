"""The worker's Prometheus metrics.

Handler outcomes are recorded from the handler's own thread (sync handlers run in
a pool) into a ShardedHistogram: per-thread rows, no lock. Everything else is
read from the worker's parts when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cluster.etcd.state import EtcdState
from cluster.plumbing.histogram import ShardedHistogram, merge_rows
from cluster.plumbing.metrics import ReadAtScrape, new_registry, pump_metrics

if TYPE_CHECKING:
    from cluster.worker.server import Worker

HANDLER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.registry = new_registry()
        # Outcomes by (route, status): the request counter and, summed over status,
        # the handler latency histogram.
        self.latency = ShardedHistogram(HANDLER_BUCKETS)
        self.exceptions = Counter("cluster_worker_exceptions",
                                  "Exceptions raised by handlers, by route and type",
                                  ["route", "type"], registry=self.registry)
        self.registry.register(ReadAtScrape(self.read))
        # record((route, status), seconds): the histogram's own method, no wrapper.
        self.record = self.latency.observe

    def failed(self, route: str, exc: BaseException) -> None:
        self.exceptions.labels(route, type(exc).__name__).inc()

    def read(self) -> Iterable[Any]:
        worker = self.worker
        rows = self.latency.rows()
        handled = CounterMetricFamily("cluster_worker_requests",
                                      "Requests handled, by route and status",
                                      labels=["route", "status"])
        for (route, status), row in sorted(rows.items(), key=str):
            handled.add_metric([route, str(status)], sum(row[:-1]))
        yield handled
        yield self.latency.family("cluster_worker_handler_duration_seconds",
                                  "Time in the handler, by route (state writes included)",
                                  ["route"], merge_rows(rows, lambda key: key[:1]))
        yield GaugeMetricFamily("cluster_worker_running",
                                "Requests being handled now", value=worker.requests.running)
        yield GaugeMetricFamily("cluster_worker_backlog",
                                "Requests received beyond --concurrency, waiting here",
                                value=len(worker.requests.backlog))
        credit = GaugeMetricFamily("cluster_worker_credit",
                                   "Credit granted to each gateway (requests it may send)",
                                   labels=["gateway"])
        for gateway_id, link in sorted(worker.links.items()):
            if link.welcomed:
                credit.add_metric([gateway_id], 0 if worker.stopping
                                  else worker.config.concurrency + worker.config.prefetch)
        yield credit
        yield GaugeMetricFamily("cluster_worker_gateways", "Gateways this worker serves",
                                value=sum(1 for link in worker.links.values()
                                          if link.welcomed))
        events = CounterMetricFamily("cluster_worker_websocket_events",
                                     "WebSocket events handled, by type", labels=["type"])
        for kind, count in sorted(worker.ws_events.counts.items()):
            events.add_metric([kind], count)
        yield events
        state = worker.state
        ops = CounterMetricFamily("cluster_worker_state_operations",
                                  "Shared-state operations sent to the coordinator, by kind",
                                  labels=["op"])
        for op, count in sorted(state.ops.items()):
            ops.add_metric([op], count)
        yield ops
        yield CounterMetricFamily("cluster_worker_state_failures",
                                  "State batches refused or unanswered", value=state.failures)
        yield GaugeMetricFamily("cluster_worker_state_sequence",
                                "Sequence number the state replica has applied",
                                value=state.replica.seq)
        yield CounterMetricFamily("cluster_worker_state_resyncs",
                                  "Times the replica took a fresh snapshot",
                                  value=state.resyncs)
        if isinstance(state, EtcdState):
            yield CounterMetricFamily("cluster_worker_state_sequenced",
                                      "State batches committed by the sequencer gateway",
                                      value=state.sequenced)
            yield CounterMetricFamily("cluster_worker_state_conflicts",
                                      "Batches this worker committed itself that lost to "
                                      "another writer and were computed again",
                                      value=state.conflicts)
        yield CounterMetricFamily("cluster_worker_broadcast_sends",
                                  "Broadcast messages sent: one per gateway holding "
                                  "members of the group", value=worker.push.broadcast_sends)
        publisher = worker.etcd_publisher
        if publisher is not None:
            yield CounterMetricFamily("cluster_worker_history_published",
                                      "Group messages put to etcd (cluster.publish)",
                                      value=publisher.published)
            yield CounterMetricFamily("cluster_worker_history_dropped",
                                      "Group messages dropped: no etcd quorum in time, "
                                      "or too many waiting", value=publisher.dropped)
        pumps = {gateway_id: link.pump for gateway_id, link in worker.links.items()
                 if link.pump is not None}
        if worker.coordinator.pump is not None:
            pumps["coordinator"] = worker.coordinator.pump
        yield from pump_metrics(pumps)
