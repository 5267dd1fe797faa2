"""The worker's Prometheus metrics.

Handler outcomes are recorded from the handler's own thread into `HandlerOutcomes`
(outcomes.py), which the runners hold. Everything else is read, when Prometheus
scrapes, from the parts `WorkerMetrics` is given: each is the object whose numbers
it reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cluster.etcd.publisher import EtcdPublisher
from cluster.etcd.state import EtcdState
from cluster.plumbing.coordinator_link import MemberLink
from cluster.plumbing.histogram import merge_rows
from cluster.plumbing.metrics import ReadAtScrape, pump_metrics
from cluster.worker.gateway_link import GatewayLink
from cluster.worker.outcomes import HandlerOutcomes
from cluster.worker.push import Push
from cluster.worker.requests import NativeRunner
from cluster.worker.runner import Runner
from cluster.worker.state_client import StateClient


class WorkerMetrics:
    def __init__(self, outcomes: HandlerOutcomes, runner: Runner,
                 links: Mapping[str, GatewayLink], state: StateClient | EtcdState,
                 push: Push, publisher: EtcdPublisher | None, coordinator: MemberLink
                 ) -> None:
        self.outcomes = outcomes
        self.runner = runner
        self.links = links  # the worker's own dict: links come and go
        self.state = state
        self.push = push
        self.publisher = publisher
        self.coordinator = coordinator
        self.registry: CollectorRegistry = outcomes.registry
        self.registry.register(ReadAtScrape(self.read))

    def read(self) -> Iterable[Any]:
        outcomes, runner, links = self.outcomes, self.runner, self.links
        rows = outcomes.latency.rows()
        handled = CounterMetricFamily("cluster_worker_requests",
                                      "Requests handled, by route and status",
                                      labels=["route", "status"])
        for (route, status), row in sorted(rows.items(), key=str):
            handled.add_metric([route, str(status)], sum(row[:-1]))
        yield handled
        yield outcomes.latency.family("cluster_worker_handler_duration_seconds",
                                  "Time in the handler, by route (state writes included)",
                                  ["route"], merge_rows(rows, lambda key: key[:1]))
        yield GaugeMetricFamily("cluster_worker_running",
                                "Requests being handled now", value=runner.running)
        yield GaugeMetricFamily("cluster_worker_backlog",
                                "Requests received beyond --concurrency, waiting here",
                                value=len(runner.backlog))
        credit = GaugeMetricFamily("cluster_worker_credit",
                                   "Credit granted to each gateway (requests it may send)",
                                   labels=["gateway"])
        for gateway_id, link in sorted(links.items()):
            if link.welcomed:
                credit.add_metric([gateway_id], link.credit)
        yield credit
        yield GaugeMetricFamily("cluster_worker_gateways", "Gateways this worker serves",
                                value=sum(1 for link in links.values()
                                          if link.welcomed))
        if isinstance(runner, NativeRunner):
            yield GaugeMetricFamily("cluster_worker_handler_threads",
                                    "Threads for sync handlers: --threads, and more while "
                                    "handlers wait on the cluster", value=runner.pool.alive)
            yield GaugeMetricFamily("cluster_worker_handler_threads_waiting",
                                    "Sync handlers waiting on the cluster (a state write, "
                                    "members()), their slots lent", value=runner.pool.lent)
        events = CounterMetricFamily("cluster_worker_websocket_events",
                                     "WebSocket events handled, by type", labels=["type"])
        for kind, count in sorted(runner.ws_counts.items()):
            events.add_metric([kind], count)
        yield events
        state = self.state
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
            yield CounterMetricFamily("cluster_worker_state_watch_waits",
                                      "Writes that, acknowledged, waited for the watch to "
                                      "bring their revision to the replica",
                                      value=state.watch_waits)
        yield CounterMetricFamily("cluster_worker_broadcast_sends",
                                  "Broadcast messages sent: one per gateway holding "
                                  "members of the group", value=self.push.broadcast_sends)
        publisher = self.publisher
        if publisher is not None:
            yield CounterMetricFamily("cluster_worker_history_published",
                                      "Group messages put to etcd (cluster.publish)",
                                      value=publisher.published)
            yield CounterMetricFamily("cluster_worker_history_dropped",
                                      "Group messages dropped: no etcd quorum in time, "
                                      "or too many waiting", value=publisher.dropped)
        pumps = {gateway_id: link.pump for gateway_id, link in links.items()
                 if link.pump is not None}
        if self.coordinator.pump is not None:
            pumps["coordinator"] = self.coordinator.pump
        yield from pump_metrics(pumps)
