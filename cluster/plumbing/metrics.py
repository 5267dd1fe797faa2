"""What every process shares for Prometheus: a registry and its HTTP endpoint.

Each role builds its metrics on its own `CollectorRegistry` (see the role's
`metrics` module), so several roles can live in one test process without sharing
a global. Hot paths count in plain integers on the objects they already own, and
latencies in a `ShardedHistogram`; the role's collector reads them when Prometheus
scrapes, so a request pays a few list updates, never a lock.

The endpoint is a small HTTP/1.1 server on the loop (httptools parses): GET or
HEAD on a path it knows, anything else answered and counted, never a handler's
data. The coordinator adds its service-discovery path to the same server. Every
process also answers the probes an orchestrator asks (Kubernetes, compose
healthchecks, the supervisor): /live is 200 whenever the loop turns (it answers
from the loop), /ready is 200 or 503 with the conditions as a JSON object.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

import httptools
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("cluster.metrics")

# A request to this endpoint is a line and a few headers; anything bigger is not
# Prometheus. A connection that sends no complete request in time is closed, so
# idle sockets cannot pile up.
MAX_REQUEST_BYTES = 16 * 1024
IDLE_TIMEOUT = 10.0

Page = Callable[[], tuple[bytes, str]]  # body, content type
# Readiness: whether this process should get traffic now, and why (shown as JSON).
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


def new_registry() -> CollectorRegistry:
    """A registry with the process, platform and GC figures every exporter shows."""
    registry = CollectorRegistry(auto_describe=True)
    for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(_Delegate(standard))
    return registry


class _Delegate(Collector):
    """The default registry owns the standard collectors; show them here too."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def collect(self) -> Iterable[Any]:
        return self.inner.collect()  # type: ignore[no-any-return]


class ReadAtScrape(Collector):
    """Metric families built by `read()` when Prometheus scrapes."""

    def __init__(self, read: Callable[[], Iterable[Any]]) -> None:
        self.read = read

    def describe(self) -> Iterable[Any]:
        # Registering must not read: the owner may not be fully built yet.
        return []

    def collect(self) -> Iterable[Any]:
        return list(self.read())


def pump_metrics(pumps: dict[str, Any]) -> Iterable[Any]:
    """ZeroMQ frames in and out, and malformed ones dropped, per socket (a Pump's
    counters), labelled with the peer the socket talks to."""
    frames = CounterMetricFamily("cluster_zmq_frames", "ZeroMQ frames received and sent",
                                 labels=["peer", "direction"])
    bad = CounterMetricFamily("cluster_zmq_bad_frames", "Malformed ZeroMQ frames dropped",
                              labels=["peer"])
    for peer, pump in sorted(pumps.items()):
        frames.add_metric([peer, "in"], pump.frames_in)
        frames.add_metric([peer, "out"], pump.frames_out)
        bad.add_metric([peer], pump.bad_frames)
    yield frames
    yield bad


def targets_page(members: list[dict[str, Any]], own: dict[str, Any] | None = None
                 ) -> tuple[bytes, str]:
    """Prometheus HTTP service discovery: a target group per member's metrics endpoint
    (`own`: the serving process's group, listed first, when it is no member)."""
    groups = [own] if own else []
    for member in members:
        endpoint = member.get("metrics")
        if isinstance(endpoint, str) and endpoint:
            groups.append({"targets": [endpoint],
                           "labels": {"role": str(member.get("role", "")),
                                      "member": str(member.get("id", ""))}})
    return json.dumps(groups).encode(), "application/json"


def metrics_page(registry: CollectorRegistry) -> Page:
    return lambda: (generate_latest(registry), CONTENT_TYPE_LATEST)


def target(host: str, port: int, advertise_host: str) -> str:
    """host:port where Prometheus reaches a bound endpoint."""
    if advertise_host:
        host = advertise_host
    elif host in ("0.0.0.0", "", "::", "[::]"):
        host = socket.gethostname()
    return f"{host}:{port}"


class _Request:
    __slots__ = ("done", "method", "url")

    def __init__(self) -> None:
        self.url = b""
        self.method = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        self.done = True


class _EndpointProtocol(asyncio.Protocol):
    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.request = _Request()
        self.parser = httptools.HttpRequestParser(self.request)
        self.received = 0
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.timer = asyncio.get_running_loop().call_later(self.server.idle_timeout,
                                                           self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def _idle(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            log.info("metrics endpoint: no request within %.0fs from %s; closed",
                     self.server.idle_timeout, self.transport.get_extra_info("peername"))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > MAX_REQUEST_BYTES:
            self._answer(431, b"request too large\n", "text/plain")
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._answer(400, b"no upgrades here\n", "text/plain")
            return
        except httptools.HttpParserError:
            self._answer(400, b"bad request\n", "text/plain")
            return
        if self.request.done:
            self._respond(self.parser.get_method().decode("latin-1"))

    def _respond(self, method: str) -> None:
        path = httptools.parse_url(self.request.url).path.decode("latin-1")
        page = self.server.pages.get(path)
        if path in ("/live", "/ready") and method in ("GET", "HEAD"):
            ok, details = self.server.health(path)
            self._answer(200 if ok else 503, json.dumps(details).encode() + b"\n",
                         "application/json", head=method == "HEAD")
        elif page is None:
            self._answer(404, b"not found\n", "text/plain")
        elif method not in ("GET", "HEAD"):
            self._answer(405, b"method not allowed\n", "text/plain", allow=True)
        else:
            try:
                body, content_type = page()
            except Exception:
                log.exception("rendering %s failed", path)
                self._answer(500, b"internal error\n", "text/plain")
                return
            self._answer(200, body, content_type, head=method == "HEAD")

    def _answer(self, status: int, body: bytes, content_type: str, *, head: bool = False,
                allow: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.server.answers[status] = self.server.answers.get(status, 0) + 1
        if status >= 400 and status != 503:  # 503: a readiness probe saying "not yet"
            log.info("metrics endpoint: %d for a request from %s", status,
                     self.transport.get_extra_info("peername"))
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
                  405: "Method Not Allowed", 431: "Request Header Fields Too Large",
                  500: "Internal Server Error", 503: "Service Unavailable"}[status]
        head_lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}",
                      f"Content-Length: {len(body)}", "Connection: close"]
        if allow:
            head_lines.append("Allow: GET, HEAD")
        self.transport.write(("\r\n".join(head_lines) + "\r\n\r\n").encode("latin-1") +
                             (b"" if head else body))
        # One request per connection: Prometheus reconnects each scrape anyway.
        self.transport.close()


class MetricsServer:
    """Serves `pages` (path -> Page) on host:port; port 0 picks a free one."""

    def __init__(self, pages: dict[str, Page], ready: Readiness | None = None,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.pages = pages
        self.ready = ready
        self.idle_timeout = idle_timeout
        self.answers: dict[int, int] = {}
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    def health(self, path: str) -> tuple[bool, dict[str, Any]]:
        if path == "/live":
            return True, {"live": True, "pid": os.getpid()}
        if self.ready is None:
            return True, {"ready": True}
        ok, details = self.ready()
        return ok, {"ready": ok, **details}

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(lambda: _EndpointProtocol(self), host,
                                                   port, reuse_address=True)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics port {host}:{port} (--metrics-host, "
                                     f"--metrics-port): {exc.strerror}") from None
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
