"""The gateway process: HTTP listener, dispatch ROUTER, coordinator link, sweeps."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import socket
import ssl
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import zmq

from cluster import compiled
from cluster.errors import ConfigError, StoppedWhileStarting
from cluster.gateway.admission import Admission
from cluster.gateway.body_budget import BodyBudget
from cluster.gateway.client_context import ClientConnection, ClientTimeouts, ConnectionContext
from cluster.gateway.dispatch import Dispatcher
from cluster.gateway.exchange import Exchange, Upstream
from cluster.gateway.group_notices import DIRECTORY, CoordinatorDirectory
from cluster.gateway.h2_core import H2Limits
from cluster.gateway.http_connection import HttpConnection
from cluster.gateway.http_core import HttpLimits
from cluster.gateway.metrics import GatewayMetrics
from cluster.gateway.static import parse_mounts
from cluster.gateway.tls import TlsAcceptor, TlsCounters
from cluster.gateway.ws_core import WsOptions
from cluster.gateway.ws_hub import WebSocketHub
from cluster.plumbing import wire
from cluster.plumbing.config import GatewayConfig
from cluster.plumbing.coordinator_link import CoordinatorLink, MemberLink
from cluster.plumbing.http_fields import encode_fields
from cluster.plumbing.lifecycle import report_ready, run_until_signalled, unless_stopped
from cluster.plumbing.metrics import MetricsServer, metrics_page, target, targets_page
from cluster.plumbing.response_parts import ResponseHead
from cluster.plumbing.security import HANDSHAKE_FAILED, Gatekeeper, Plaintext, Security, for_process
from cluster.plumbing.zmqio import Monitor, Pump, advertised, bind

if TYPE_CHECKING:
    from cluster.etcd.history import EtcdHistory
    from cluster.etcd.sequencer import Sequencer

log = logging.getLogger("cluster.gateway")
T = TypeVar("T")

SWEEP_INTERVAL = 0.1
# Client timeouts are checked in slices: every connection once per CHECK_PERIOD, a
# 1/CHECK_SLICES part of them every CHECK_PERIOD/CHECK_SLICES. One pass over 11,000
# connections at once held the loop for about 4 ms twice a second, which every
# request arriving meanwhile waited for: p99 doubled (docs/performance.md, Overload).
CHECK_PERIOD = 0.5
CHECK_SLICES = 25
PROBE_INTERVAL = 0.1  # at most one probe of every worker per this many seconds
# TLS 1.2's suites: forward secret and AEAD only (TLS 1.3's are all that already).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


class LocalAnswers:
    """--local-reply: every request answered here with the same text, no worker asked
    (the benchmark's floor: the gateway's cost without the hop)."""

    def __init__(self, text: str, gateway_id: str) -> None:
        self.body = text.encode()
        self.head = encode_fields([("content-type", "text/plain; charset=utf-8"),
                                   ("x-worker", gateway_id)])[0]

    def submit(self, exchange: Exchange) -> None:
        exchange.sink.deliver(exchange, ResponseHead(200, self.head, self.body, False))

    def client_gone(self, exchange: Exchange) -> None:
        pass  # answered at once: nothing is pending

    def stream_credit(self, exchange: Exchange, nbytes: int) -> None:
        pass  # nothing is streamed


class Gateway:
    def __init__(self, config: GatewayConfig, loop: asyncio.AbstractEventLoop,
                 zmq_context: zmq.Context[zmq.Socket[bytes]],
                 security: Security | None = None) -> None:
        self.config = config
        self.loop = loop
        self.zmq_context = zmq_context
        self.security = security if security is not None else Plaintext()
        self.gatekeeper: Gatekeeper | None = None
        self._last_probe = 0.0  # loop time the workers were last probed
        self.tls = TlsCounters()
        self.etcd_history: EtcdHistory | None = None
        self.directory: CoordinatorDirectory | None = None
        self.sequencer: Sequencer | None = None
        self.id = f"gw-{uuid.uuid4().hex[:12]}"
        self.pump: Pump | None = None  # the workers' ROUTER, once bound (start)
        self.dispatcher = Dispatcher(loop, self.id, request_timeout=config.request_timeout,
                                     peer_expiry=config.peer_expiry, max_queue=config.max_queue,
                                     defer_timeout=config.defer_timeout)
        limits = HttpLimits(config.max_request_line, config.max_header_bytes,
                            config.max_header_count, config.max_body)
        # Requests go to the workers; with --local-reply, nowhere (a benchmark's floor).
        upstream: Upstream = self.dispatcher if not config.local_reply else LocalAnswers(
            config.local_reply, self.id)
        self.hub = WebSocketHub(loop, self.id, self.dispatcher, max_queue=config.ws_max_queue,
                                ping_interval=config.ws_ping_interval,
                                ping_timeout=config.ws_ping_timeout,
                                open_timeout=config.request_timeout)
        self.dispatcher.hub = self.hub
        ws_options = WsOptions(max_size=config.ws_max_size, deflate=config.ws_deflate,
                               origins=tuple(o.strip() for o in config.ws_origins.split(",")
                                             if o.strip()))
        self.http = ConnectionContext(limits, upstream, config.header_timeout,
                                      config.keepalive_timeout, config.max_pipeline,
                                      ws_options, self.hub, gateway_id=self.id,
                                      access_log=config.access_log,
                                      scheme="https" if config.certfile else "http",
                                      static=parse_mounts(config.static,
                                                          config.static_dotfiles),
                                      h2=H2Limits(
                                          max_streams=config.h2_max_streams,
                                          max_header_bytes=config.max_header_bytes,
                                          max_header_count=config.max_header_count,
                                          max_body=config.max_body) if config.http2 else None,
                                      h2_stall_timeout=config.h2_stall_timeout,
                                      timeouts=ClientTimeouts(config.body_timeout,
                                                              config.body_total_timeout,
                                                              config.send_timeout),
                                      budget=BodyBudget(config.max_body_buffer))
        self.admission = Admission(config.max_connections, tls=bool(config.certfile))
        self.metrics = GatewayMetrics(self.http, self.hub, self.dispatcher, self.admission,
                                      self.tls)
        self.metrics_server = MetricsServer({"/metrics": metrics_page(self.metrics.registry)},
                                            ready=self.readiness)
        self.stopping = False
        self._update_date()
        self.server: asyncio.AbstractServer | None = None
        self.coordinator: MemberLink | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.members: list[dict[str, Any]] = []  # the membership table, as last seen

    async def start(self) -> dict[str, Any]:
        config = self.config
        # ZAP answers before the first worker can connect.
        self.gatekeeper = self.security.gatekeeper(self.zmq_context)
        sock = self.zmq_context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        self.security.server(sock)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sends to a vanished worker fail loudly
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, config.max_frame)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        bind(sock, config.dispatch_bind, "--dispatch-bind")
        endpoint = advertised(sock.getsockopt_string(zmq.LAST_ENDPOINT), config.advertise_host)
        self.pump = Pump(self.loop, sock, self.dispatcher, routed=True, max_frame=config.max_frame)
        self.dispatcher.pump = self.pump
        self._watch_disconnects(sock)

        context = self._tls()
        http, admission = self.http, self.admission
        if context is None:
            def accept() -> asyncio.Protocol:
                if admission.full(http.open):
                    return admission.refusal()
                return HttpConnection(http, self.loop)
        else:
            def accept() -> asyncio.Protocol:
                if admission.full(http.open):
                    return admission.refusal()
                return TlsAcceptor(self.loop, context, lambda: HttpConnection(http, self.loop),
                                   config.header_timeout, self.tls)
        # Bound now, listening later (--wait-for-worker): until then a client is
        # refused by the kernel, not answered 503 by us.
        listener = bind_listener(config.host, config.port)
        port = listener.getsockname()[1]
        info = {"endpoint": endpoint, "http": f"{config.host}:{port}", "pid": os.getpid(),
                # Workers connect to the endpoint as CURVE clients of this key.
                "key": self.security.public_key.decode()}
        if config.metrics_port >= 0:
            bound = await self.metrics_server.start(config.metrics_host, config.metrics_port)
            info["metrics"] = target(config.metrics_host, bound, config.advertise_host)
        coordinator: MemberLink
        if config.state_backend:
            from cluster.etcd.history import EtcdHistory
            from cluster.etcd.membership import EtcdMembership
            coordinator = EtcdMembership(config, self.id, "gateway", info, self,
                                         security=self.security)
            # Numbered group messages come from etcd itself (cluster/etcd/history.py).
            history = EtcdHistory(coordinator.target, config.request_timeout,
                                  config.history_size, config.history_ttl,
                                  self.hub.feed, self.hub.notices)
            self.hub.feed.history = history
            self.hub.notices.directory = history
            history.start(self.loop)
            self.etcd_history = history
            if config.state_sequencer:
                from cluster.etcd.sequencer import Sequencer
                self.sequencer = Sequencer(self.loop, self.id, coordinator, self.dispatcher,
                                           config.peer_expiry, config)
                self.dispatcher.sequencer = self.sequencer
                self.sequencer.start()
            # No coordinator to list the metrics endpoints: every gateway does.
            self.metrics_server.pages["/targets"] = lambda: targets_page(self.members)
        else:
            link = CoordinatorLink(config, self.zmq_context, self.id, "gateway", info, self,
                                   security=self.security)
            self.directory = CoordinatorDirectory(self.loop, link, self.id)
            self.hub.feed.history = self.directory
            self.hub.notices.directory = self.directory
            coordinator = link
        self.coordinator = coordinator
        coordinator.start(self.loop)  # its pump, if it has one, is made here
        pumps = {"workers": self.pump}
        if coordinator.pump is not None:
            pumps["coordinator"] = coordinator.pump
        self.metrics.watch(pumps, self.gatekeeper, self.sequencer, self.etcd_history)
        if not config.local_reply:  # the benchmark's no-hop mode needs no cluster
            await coordinator.wait_registered()
        self._tasks = [self.loop.create_task(self._sweep()),
                       self.loop.create_task(self._in_slices(
                           lambda: list(self.http.connections), _check_connection)),
                       self.loop.create_task(self._in_slices(
                           lambda: list(self.hub.sessions.values()), self.hub.check)),
                       self.loop.create_task(self._heartbeat())]
        if config.wait_for_worker and not config.local_reply:
            try:
                await asyncio.wait_for(self.dispatcher.linked.wait(), config.start_timeout)
            except TimeoutError:
                log.warning("no worker linked within %gs (--start-timeout); opening the HTTP "
                            "port anyway: 503 until one links", config.start_timeout)
        self.server = await self.loop.create_server(accept, sock=listener, backlog=2048)
        log.info("gateway %s: http on %s:%d, workers connect to %s (%s)",
                 self.id, config.host, port, endpoint, compiled.MODE)
        return {"role": "gateway", "id": self.id, "port": port, "endpoint": endpoint,
                "metrics": info.get("metrics", ""), "build": compiled.MODE}

    # -- membership (this gateway is its link's MembershipWatcher) --------------
    def on_members(self, members: list[dict[str, Any]]) -> None:
        self.members = members

    def on_coordinator(self, msg: dict[str, Any]) -> None:
        kind = msg["k"]
        if kind in (wire.HISTORY_MESSAGE, wire.HISTORY_ANSWER):
            self.hub.on_history(msg)
        elif kind == wire.WS_GROUPS_ACK:
            self.hub.notices.answered(DIRECTORY, msg)
        elif kind == wire.WS_ACTIONS:  # an outside publisher's, handed on (publisher.py)
            self.hub.on_actions(DIRECTORY, msg)
        elif kind == wire.GROUPS_ASK and self.directory is not None:
            self.directory.tell_all(self.hub.groups.names())

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: listening, not stopping, and some worker takes requests."""
        workers = self.dispatcher.serving()
        listening = self.server is not None and not self.stopping
        return listening and workers > 0, {"listening": listening, "workers": workers,
                                           "connections": self.http.open}

    def _tls(self) -> ssl.SSLContext | None:
        """HTTPS and WSS with --certfile/--keyfile; a bad pair fails the start."""
        if not self.config.certfile:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.config.certfile, self.config.keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"--certfile/--keyfile: cannot load: {exc}") from None
        # RFC 9113 §9.2: HTTP/2 needs TLS 1.2 or later with an ephemeral key exchange
        # and an AEAD cipher. The same suites serve HTTP/1.1 (Mozilla's "intermediate"
        # profile is AEAD-only too), so no handshake can end in a suite h2 forbids.
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(TLS12_CIPHERS)
        # HTTP/2 by ALPN, HTTP/1.1 for clients that offer nothing else.
        context.set_alpn_protocols(["h2", "http/1.1"] if self.config.http2 else ["http/1.1"])
        return context

    def _watch_disconnects(self, sock: zmq.Socket[bytes]) -> None:
        """A worker's connection dropped: ping every worker now, so a send error names
        the dead one. Handshakes refused before ZAP (no key) are counted here too."""
        def on_event(event: int) -> None:
            if event & zmq.EVENT_DISCONNECTED:
                now = self.loop.time()
                if now - self._last_probe >= PROBE_INTERVAL:  # a stranger's retries
                    self._last_probe = now                      # must not flood workers
                    self.dispatcher.probe()
            elif self.gatekeeper is not None:
                self.gatekeeper.on_socket_event(event)

        self._monitor = Monitor(self.loop, sock, zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED,
                                on_event)

    def _update_date(self) -> None:
        self.http.date = email.utils.formatdate(usegmt=True).encode()

    async def _sweep(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            ticks += 1
            self.dispatcher.expire()
            if ticks % 5 == 0:
                self._update_date()

    async def _in_slices(self, snapshot: Callable[[], list[T]],
                         check: Callable[[T, float], None]) -> None:
        """`check(item, now)` for every item once per CHECK_PERIOD, a slice at a time:
        client timeouts (HTTP headers, keep-alive) and WebSocket keepalive pings."""
        batch: list[T] = []
        at = step = 0
        while True:
            await asyncio.sleep(CHECK_PERIOD / CHECK_SLICES)
            if at >= len(batch):
                batch = snapshot()
                at, step = 0, -(-len(batch) // CHECK_SLICES)  # ceiling
            now = self.loop.time()
            for item in batch[at:at + step]:
                check(item, now)
            at += step

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            self.dispatcher.heartbeat()

    async def stop(self) -> None:
        """Drain: stop accepting, finish in-flight requests within the grace, close."""
        self.stopping = True
        if self.server is not None:
            self.server.close()
        self.metrics_server.close()
        self.hub.shutdown()
        for conn in list(self.http.connections):
            conn.shutdown()
        deadline = self.loop.time() + self.config.shutdown_grace
        while (self.http.connections or self.dispatcher.pending or self.dispatcher.deferred) and \
                self.loop.time() < deadline:
            await asyncio.sleep(0.05)  # poll: bounded by the grace period
        self.dispatcher.fail_all(503)
        self.dispatcher.goodbye()
        for conn in list(self.http.connections):
            conn.close_now()
        for task in self._tasks:
            task.cancel()
        if self.sequencer is not None:  # before the lease goes: the key is ours to delete
            await self.sequencer.close()
        if self.coordinator is not None:
            self.coordinator.close()
            await self.coordinator.wait_closed()
        if self.etcd_history is not None:
            self.etcd_history.close()
        if self.pump is not None:
            self.pump.close(linger=0.5)  # the BYEs still go
        self._monitor.close()
        if self.gatekeeper is not None:
            self.gatekeeper.stop()


def _check_connection(conn: ClientConnection, now: float) -> None:
    conn.check_timeouts(now)


def serve(config: GatewayConfig) -> None:
    async def main(stop: asyncio.Event) -> None:
        security = for_process(config.keys, config.key_name, config.insecure, "gateway",
                           wait=config.start_timeout)
        zmq_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        gateway = Gateway(config, asyncio.get_running_loop(), zmq_context, security)
        try:
            info = await unless_stopped(gateway.start(), stop)
        except StoppedWhileStarting:
            zmq_context.destroy(linger=0)
            raise
        report_ready(config.ready_fd, info)
        await stop.wait()
        log.info("gateway %s: stopping", gateway.id)
        await gateway.stop()
        zmq_context.term()

    run_until_signalled(main, config.ready_fd, config.heartbeat_interval)


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port, not yet listening."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"HTTP port {host}:{port} (--host, --port): "
                                 f"{exc.strerror}") from None
    return sock
