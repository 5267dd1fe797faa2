"""The gateway's Prometheus metrics, read from the counters its parts keep."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cluster.gateway.admission import Admission
from cluster.gateway.client_context import ERROR_KINDS, ConnectionContext
from cluster.gateway.dispatch import Dispatcher
from cluster.gateway.tls import TlsCounters
from cluster.gateway.ws_hub import WebSocketHub
from cluster.plumbing.histogram import merge_rows
from cluster.plumbing.metrics import ReadAtScrape, new_registry, pump_metrics
from cluster.plumbing.security import Gatekeeper
from cluster.plumbing.zmqio import Pump

if TYPE_CHECKING:  # made only on etcd, and imported there only
    from cluster.etcd.history import EtcdHistory
    from cluster.etcd.sequencer import Sequencer


class GatewayMetrics:
    """Reads, when Prometheus scrapes, the parts it is given: each family comes from
    the one part that keeps its numbers (the functions below, one per part). The
    parts the gateway makes in `start` (its sockets, the etcd ones) are given then."""

    def __init__(self, http: ConnectionContext, hub: WebSocketHub, dispatcher: Dispatcher,
                 admission: Admission, tls: TlsCounters) -> None:
        self.http = http
        self.hub = hub
        self.dispatcher = dispatcher
        self.admission = admission
        self.tls = tls
        self.pumps: dict[str, Pump] = {}
        self.gatekeeper: Gatekeeper | None = None
        self.sequencer: Sequencer | None = None
        self.history: EtcdHistory | None = None
        self.registry: CollectorRegistry = new_registry()
        self.registry.register(ReadAtScrape(self.read))

    def watch(self, pumps: dict[str, Pump], gatekeeper: Gatekeeper | None,
              sequencer: Sequencer | None, history: EtcdHistory | None) -> None:
        """The parts `Gateway.start` made: its ZeroMQ pumps (to the workers, to the
        coordinator), the ZAP gatekeeper, and on etcd the sequencer and the history."""
        self.pumps = pumps
        self.gatekeeper = gatekeeper
        self.sequencer = sequencer
        self.history = history

    def read(self) -> Iterable[Any]:
        http, hub = self.http, self.hub
        yield from _connections(http, hub)
        yield from _requests(http)
        errors = CounterMetricFamily("cluster_gateway_parse_errors",
                                     "Requests refused before reaching a worker, by kind",
                                     labels=["kind"])
        for status, count in sorted(http.errors_by_status.items()):
            errors.add_metric([ERROR_KINDS.get(status, str(status))], count)
        for code, count in sorted(hub.protocol_errors.items()):
            errors.add_metric([f"websocket_{code}"], count)
        yield errors
        traffic = CounterMetricFamily("cluster_gateway_bytes",
                                      "Bytes from and to clients (HTTP and WebSocket)",
                                      labels=["direction"])
        traffic.add_metric(["in"], http.bytes_in)
        traffic.add_metric(["out"], http.bytes_out + hub.bytes_out)
        yield traffic
        yield from _dispatch(self.dispatcher)
        yield from _websocket(hub)
        yield from pump_metrics(self.pumps)
        if self.gatekeeper is not None:
            yield self.gatekeeper.metric()
        yield _counter("cluster_gateway_connections_refused",
                       "Connections refused at --max-connections (503 and close)",
                       self.admission.refused)
        yield from _limits(http)
        yield _counter("cluster_gateway_tls_handshake_failures",
                       "TLS handshakes with clients that failed or timed out (plain HTTP "
                       "to the HTTPS port, old protocols, scanners)", self.tls.failed)
        if self.sequencer is not None:  # on etcd
            yield from _sequencer(self.sequencer)
        if self.history is not None:
            yield from _history(self.history)


def _connections(http: ConnectionContext, hub: WebSocketHub) -> Iterable[Any]:
    conns = GaugeMetricFamily("cluster_gateway_connections",
                              "Open client connections by protocol",
                              labels=["protocol"])
    conns.add_metric(["http"], len(http.connections))  # HTTP/2 ones included
    streams = sum(1 for session in hub.sessions.values() if not session.worker)
    conns.add_metric(["websocket"], len(hub.sessions) - streams)
    conns.add_metric(["event_stream"], streams)  # Server-Sent Events responses
    yield conns
    opened = CounterMetricFamily("cluster_gateway_event_streams",
                                 "Responses that became streams of Server-Sent Events")
    opened.add_metric([], hub.event_streams)
    yield opened


def _requests(http: ConnectionContext) -> Iterable[Any]:
    rows = http.latency.rows()
    requests = CounterMetricFamily("cluster_gateway_requests",
                                   "HTTP responses sent, by request method and status",
                                   labels=["method", "status"])
    for (method, status), row in sorted(rows.items()):
        requests.add_metric([method, str(status)], sum(row[:-1]))
    yield requests
    yield http.latency.family(
        "cluster_gateway_request_duration_seconds",
        "HTTP requests from the last byte in to the last byte out, including the worker",
        [], merge_rows(rows, lambda _key: ()))


def _dispatch(dispatcher: Dispatcher) -> Iterable[Any]:
    yield _gauge("cluster_gateway_dispatch_inflight",
                 "Requests sent to workers and not yet answered",
                 len(dispatcher.pending))
    yield _gauge("cluster_gateway_dispatch_queued",
                 "Requests waiting for worker credit", len(dispatcher.waiting))
    yield _gauge("cluster_gateway_deferred_requests",
                 "Requests whose handler deferred them, waiting for reply()",
                 len(dispatcher.deferred))
    yield _gauge("cluster_gateway_workers", "Workers this gateway dispatches to",
                 len(dispatcher.workers))
    credit = GaugeMetricFamily("cluster_gateway_worker_credit",
                               "Requests each worker can still take from this gateway",
                               labels=["worker"])
    for link in dispatcher.workers.values():
        credit.add_metric([link.name], max(link.credit, 0))
    yield credit
    yield _counter("cluster_gateway_late_replies",
                   "Worker replies that came after the client was answered (504)",
                   dispatcher.late_replies)


def _websocket(hub: WebSocketHub) -> Iterable[Any]:
    messages = CounterMetricFamily("cluster_gateway_websocket_messages",
                                   "WebSocket messages from and to clients",
                                   labels=["direction"])
    messages.add_metric(["in"], hub.messages_in)
    messages.add_metric(["out"], hub.messages_out)
    yield messages
    yield _counter("cluster_gateway_broadcasts", "Broadcasts received from workers (and "
                   "publishers) for a group", hub.broadcasts)
    yield _counter("cluster_gateway_broadcasts_unheld",
                   "Broadcasts received for a group with no member here (a worker's "
                   "view of the groups lagged, or an outside publisher)",
                   hub.broadcasts_unheld)
    yield _counter("cluster_gateway_websocket_slow_closes",
                   "WebSocket clients closed with 1013 for reading too slowly",
                   hub.slow_closes)
    yield _counter("cluster_gateway_push_missing",
                   "Pushes to connections that were already gone", hub.push_missing)
    yield _counter("cluster_gateway_websocket_shard_moves",
                   "Shard keys moved to a worker that joined", hub.shards.moves)


def _limits(http: ConnectionContext) -> Iterable[Any]:
    """The client limits: connections, HTTP/2, timeouts, the body buffer."""
    yield _gauge("cluster_gateway_open_connections",
                 "Client connections open (HTTP and WebSocket), against --max-connections",
                 http.open)
    yield _counter("cluster_gateway_http2_connections",
                   "Client connections that spoke HTTP/2 (ALPN or prior knowledge)",
                   http.h2_connections)
    yield _counter("cluster_gateway_http2_abusive",
                   "HTTP/2 connections sent GOAWAY for abuse (rapid reset, floods, "
                   "oversized header lists)", http.h2_abusive)
    yield _counter("cluster_gateway_http2_stalls",
                   "HTTP/2 streams reset after waiting --h2-stall-timeout for the "
                   "client's window (a connection that reads nothing at all counts "
                   "in client_timeouts, phase send)", http.h2_stalls)
    timed_out = CounterMetricFamily("cluster_gateway_client_timeouts",
                                    "Clients answered 408 or cut for taking too long, by "
                                    "phase: headers, body (--body-timeout, "
                                    "--body-total-timeout), send (--send-timeout)",
                                    labels=["phase"])
    for phase in ("headers", "body", "send"):
        timed_out.add_metric([phase], http.timed_out.get(phase, 0))
    yield timed_out
    yield _gauge("cluster_gateway_body_buffer_bytes",
                 "Bytes of unfinished request bodies held, against --max-body-buffer",
                 http.budget.held)
    yield _counter("cluster_gateway_body_buffer_refused",
                   "Requests refused 503 for want of room in --max-body-buffer",
                   http.budget.refused)


def _sequencer(seq: Sequencer) -> Iterable[Any]:
    yield _gauge("cluster_gateway_state_sequencer",
                 "1 while this gateway is the elected state sequencer",
                 1 if seq.token is not None else 0)
    yield _counter("cluster_gateway_state_sequencer_batches",
                   "Workers' state batches this gateway committed as sequencer",
                   seq.batches)
    yield _counter("cluster_gateway_state_sequencer_messages",
                   "Workers' messages those batches came in (fewer: a worker sends the "
                   "batches of one turn of its loop together)", seq.messages)
    yield _counter("cluster_gateway_state_sequencer_transactions",
                   "etcd transactions those batches took (fewer: more per one)",
                   seq.committer.groups)
    yield _counter("cluster_gateway_state_sequencer_refused",
                   "Batches answered 'not the sequencer' (then the worker "
                   "commits them itself)", seq.refused)


def _history(history: EtcdHistory) -> Iterable[Any]:
    yield _counter("cluster_gateway_history_delivered",
                   "Numbered group messages delivered from the etcd watch",
                   history.delivered)
    yield _counter("cluster_gateway_history_watch_resumes",
                   "Times the history watch resumed on another etcd member",
                   history.resumes)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
