"""The worker process: a link to every gateway, credit, and the handler's execution.

Theory of operation
-------------------
The coordinator tells the worker which gateways exist. For each one the worker
connects a DEALER (its identity is the worker id) and says HELLO with its credit,
`--concurrency` + `--prefetch`. The gateway sends REQUESTs only against that credit;
each final RESPONSE gives one back. Requests run as coroutines on the loop (async
handlers), on the thread pool (sync handlers), or inline (ready answers such as
404). At most `--concurrency` run at once; any excess (the prefetched ones, or
several gateways each using their full credit) waits in a local queue, which the
credit keeps bounded. Prefetch keeps a slot from idling for the round trip a
returned credit takes to bring the next request: measured with 16 one-at-a-time
workers on a 10 ms handler, 91% of the ideal rate without it.

Heartbeats go both ways on every link; a gateway silent for the expiry is sent
HELLO again until it answers (a restarted gateway learns of us that way).

Links open only once the state replica is synced, so no request runs on an empty
replica. To stop (SIGTERM; a rolling restart), the worker says HELLO with credit 0
on every link; the WELCOME that answers it is, on an ordered link, the proof that
no REQUEST is still on its way. It then finishes what it holds (at most
--shutdown-grace), says BYE to each gateway and leaves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import zmq

from cluster import realtime, wire
from cluster.app import App
from cluster.config import WorkerConfig
from cluster.errors import (
    BadField,
    BadResponse,
    ConfigError,
    HandlerLoadError,
    LifespanError,
    StateError,
    StateUnavailable,
    StoppedWhileStarting,
)
from cluster.etcd.membership import EtcdMembership
from cluster.etcd.state import EtcdState
from cluster.http_fields import encode_fields
from cluster.lifecycle import report_ready, run_until_signalled, unless_stopped
from cluster.metrics import MetricsServer, metrics_page, target
from cluster.registry import CoordinatorLink, MemberLink
from cluster.security import Plaintext, Security, for_process
from cluster.worker.adapters import Invocation, settle
from cluster.worker.asgi import ASGIHandler
from cluster.worker.asgi_runner import AsgiRunner
from cluster.worker.flow import Streams
from cluster.worker.loader import load_handler, make_adapter
from cluster.worker.messages import (
    StreamEnvelopes,
    build_request,
    normalize,
    response,
    server_error,
)
from cluster.worker.metrics import WorkerMetrics
from cluster.worker.state_client import StateClient
from cluster.worker.threadpool import Emit, ThreadPool
from cluster.worker.ws import ConnectionQueues, build_ws_request, reply_actions
from cluster.worker.ws import connect_info as connect_ws_info
from cluster.zmqio import Pump

log = logging.getLogger("cluster.worker")

Outgoing = tuple["GatewayLink", dict[str, Any]]


async def _aiter(items: Any) -> Any:
    """A sync iterable as an async one (the loop runs it between sends)."""
    for item in items:
        yield item


WS_KINDS = {wire.WS_OPEN: "ws.connect", wire.WS_MESSAGE: "ws.message",
            wire.WS_CLOSED: "ws.close"}
# A sharded connection arriving here, or leaving for another worker: no handler call.
WS_HANDOVER = (wire.WS_ADOPT, wire.WS_RELEASE)


class GatewayLink:
    def __init__(self, worker: Worker, gateway_id: str, endpoint: str, key: bytes) -> None:
        self.worker = worker
        self.gateway_id = gateway_id
        self.endpoint = endpoint
        self.closed = False
        self.welcomed = False
        self.hellos = 0  # sent; the gateway answers each with a WELCOME, in order
        self.welcomes = 0
        self.drain_mark = -1  # the HELLO with credit 0 that began draining is this one
        self.gone = False  # the gateway said BYE: it is stopping
        self.orphaned = False  # gone from membership; closed once it is silent too
        self.last_heard = time.monotonic()
        sock = worker.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt_string(zmq.IDENTITY, worker.id)
        sock.setsockopt(zmq.MAXMSGSIZE, worker.config.max_frame)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        worker.security.client(sock, key)  # the gateway's key, from its membership entry
        sock.connect(endpoint)
        self.pump = Pump(worker.loop, sock, self.on_messages, routed=False,
                         max_frame=worker.config.max_frame)
        self.hello()

    def hello(self) -> None:
        config = self.worker.config
        credit = 0 if self.worker.stopping else config.concurrency + config.prefetch
        self.hellos += 1
        self.post(wire.envelope(wire.HELLO, id=self.worker.id, credit=credit))

    def drain(self) -> None:
        """Credit 0: the gateway sends nothing more after it has read this."""
        self.hello()
        # A gateway that never welcomed us (or forgot us) has sent us nothing.
        self.drain_mark = self.hellos if self.welcomed else 0

    @property
    def drained(self) -> bool:
        """Nothing more can come on this link: the gateway answered our credit-0 HELLO
        (every REQUEST it sent is here), said BYE, or is silent past the expiry."""
        return self.closed or self.gone or 0 <= self.drain_mark <= self.welcomes or \
            self.silent

    def post(self, msg: dict[str, Any]) -> None:
        if not self.closed:
            self.pump.post(msg)

    def on_messages(self, _peer: bytes | None, messages: list[dict[str, Any]]) -> None:
        self.last_heard = time.monotonic()
        for msg in messages:
            kind = msg["k"]
            if kind == wire.REQUEST:
                self.worker.accept(self, msg)
            elif kind in WS_KINDS or kind in WS_HANDOVER:
                self.worker.ws_event(self, msg)
            elif kind == wire.GONE:
                self.worker.client_gone(self, msg["id"])
            elif kind == wire.STREAM_CREDIT:
                self.worker.streams.credit(self.gateway_id, msg["id"], msg["bytes"])
            elif kind == wire.WS_QUERY_REPLY:
                self.worker.on_query_reply(self.gateway_id, msg)
            elif kind == wire.WELCOME:
                self.welcomes += 1
                if not self.welcomed:
                    log.info("connected to gateway %s at %s", self.gateway_id, self.endpoint)
                self.welcomed = True
            elif kind == wire.WHO:
                self.welcomed = False
                self.hello()
            elif kind == wire.BYE:
                self.gone = True  # it stops; a restarted one says WHO to our heartbeat
                self.welcomed = False
            elif kind != wire.HEARTBEAT:
                log.warning("unexpected %s from gateway; ignored", kind)

    @property
    def silent(self) -> bool:
        return time.monotonic() - self.last_heard > self.worker.config.peer_expiry

    def heartbeat(self) -> None:
        if self.silent:
            if self.welcomed:
                log.warning("gateway %s silent; saying hello until it answers", self.gateway_id)
            self.welcomed = False
        if self.welcomed:
            self.post(wire.envelope(wire.HEARTBEAT, id=self.worker.id))
        else:
            self.hello()

    def close(self, linger: float = 0.0) -> None:
        self.closed = True
        self.pump.close(linger)


class Worker:
    def __init__(self, config: WorkerConfig, loop: asyncio.AbstractEventLoop,
                 ctx: zmq.Context[zmq.Socket[bytes]], handler: App | Callable[..., Any],
                 worker_id: str, security: Security | None = None) -> None:
        self.config = config
        self.security = security if security is not None else Plaintext()
        self.loop = loop
        self.ctx = ctx
        self.id = worker_id
        # Framework keys of the state (upper case, read-only), kept from membership.
        self.framework: dict[str, Any] = {"WORKER": worker_id, "GATEWAYS": [], "WORKERS": []}
        self.links: dict[str, GatewayLink] = {}
        self.running = 0
        self.backlog: deque[tuple[GatewayLink, dict[str, Any]]] = deque()
        self.stopping = False
        self.pool: ThreadPool[Outgoing] = ThreadPool(loop, config.threads, self._emitted)
        info = {"pid": os.getpid(), "handler": config.handler}
        self.coordinator: MemberLink
        self.state: StateClient | EtcdState
        if config.state_backend:
            self.coordinator = EtcdMembership(config, self.id, "worker", info, self.on_members,
                                              security=self.security)
            self.state = EtcdState(loop, config, self.framework)
        else:
            link = CoordinatorLink(config, ctx, self.id, "worker", info, self.on_members,
                                   security=self.security)
            self.coordinator = link
            self.state = StateClient(loop, ctx, link, config.state_timeout, self.framework)
            link.on_other = self.state.on_coordinator  # state acks, snapshots, MEMBERS
        self.adapter = make_adapter(handler, self.state)
        self.ws_info: dict[str, dict[str, Any]] = {}  # per open connection, from its connect
        # connection -> its shard's event queue, for those adopted (a NUL first: a
        # shard key never names a connection's own queue)
        self.ws_shard_queue: dict[str, str] = {}
        self.ws_queues = ConnectionQueues(self._run_ws, loop.create_task)
        self.loop_thread = threading.get_ident()
        self._queries: dict[int, tuple[asyncio.Future[list[str]], set[str], list[str]]] = {}
        self._query_rid = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self.ws_events: dict[str, int] = {}  # counted on the loop thread
        self.streams = Streams(loop)  # flow control of the responses being streamed
        self.asgi = AsgiRunner(self, self.adapter) if isinstance(self.adapter, ASGIHandler) \
            else None
        self.metrics = WorkerMetrics(self)
        self.metrics_server = MetricsServer({"/metrics": metrics_page(self.metrics.registry)},
                                            ready=self.readiness)
        self.gateways: dict[str, tuple[str, str]] = {}  # from membership: endpoint, key
        self._said_no_history = False

    async def start_metrics(self) -> str:
        """Serve /metrics if configured; the host:port Prometheus should scrape, or ''."""
        config = self.config
        if config.metrics_port < 0:
            return ""
        port = await self.metrics_server.start(config.metrics_host, config.metrics_port)
        return target(config.metrics_host, port, config.advertise_host)

    def start(self) -> None:
        self.coordinator.start(self.loop)
        if isinstance(self.state, EtcdState):
            self.state.start()
        self._tasks.append(self.loop.create_task(self._heartbeat()))
        self._tasks.append(self.loop.create_task(self._link_once_synced()))

    async def _link_once_synced(self) -> None:
        await self.state.synced.wait()
        self._link_gateways()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: registered, state synced, welcomed by every gateway it knows."""
        registered = self.coordinator.registered.is_set()
        synced = self.state.synced.is_set()
        welcomed = sum(1 for link in self.links.values() if link.welcomed)
        ok = registered and synced and not self.stopping and welcomed == len(self.gateways)
        return ok, {"registered": registered, "state_synced": synced,
                    "gateways": len(self.gateways), "welcomed_by": welcomed,
                    "stopping": self.stopping}

    async def connected(self, timeout: float, stop: asyncio.Event) -> bool:
        """Wait until registered, holding the state, and welcomed by every gateway we
        know (but one that said BYE); or until `timeout`, or `stop`."""
        deadline = self.loop.time() + timeout
        try:
            await asyncio.wait_for(self.coordinator.registered.wait(), timeout)
            await asyncio.wait_for(self.state.synced.wait(), deadline - self.loop.time())
        except TimeoutError:
            return False
        while not all(link.welcomed or link.gone for link in self.links.values()):
            if self.loop.time() > deadline or stop.is_set():
                return False
            await asyncio.sleep(0.02)  # poll: bounded by the deadline
        return True

    # -- membership ------------------------------------------------------------
    def on_members(self, members: list[dict[str, Any]]) -> None:
        gateways = {m["id"]: (m["endpoint"], m["key"]) for m in members
                    if m.get("role") == "gateway" and isinstance(m.get("endpoint"), str)
                    and isinstance(m.get("key"), str)}
        self.framework["GATEWAYS"] = sorted(gateways)
        self.framework["WORKERS"] = sorted(m["id"] for m in members if m.get("role") == "worker")
        # A gateway missing from the table is not proof of death: a restarted
        # coordinator lists members as they re-register. Its link closes only once
        # the link's own heartbeats are silent too (see _heartbeat).
        for gid, link in self.links.items():
            link.orphaned = gid not in gateways
        self.gateways = gateways
        if self.state.synced.is_set():
            self._link_gateways()

    def _link_gateways(self) -> None:
        """A link to each gateway in the membership we do not have one to yet."""
        if self.stopping:
            return
        for gid, (endpoint, key) in self.gateways.items():
            if gid not in self.links and endpoint:
                try:
                    self.links[gid] = GatewayLink(self, gid, endpoint, str(key).encode())
                except ConfigError as exc:  # a gateway with no key, met by a secure worker
                    log.warning("gateway %s at %s: %s; not connecting", gid, endpoint, exc)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            for gid, link in list(self.links.items()):
                if link.orphaned and link.silent:
                    log.info("gateway %s left the cluster", gid)
                    link.close()
                    del self.links[gid]
                else:
                    link.heartbeat()

    # -- requests --------------------------------------------------------------
    def accept(self, link: GatewayLink, env: dict[str, Any]) -> None:
        if self.running >= self.config.concurrency:
            self.backlog.append((link, env))
            return
        self._start(link, env)

    def _start(self, link: GatewayLink, env: dict[str, Any]) -> None:
        self.running += 1
        rid: int = env["id"]
        if self.asgi is not None:
            self.asgi.request(link, env)  # builds its scope from the envelope itself
            return
        try:
            req = build_request(env, link.gateway_id)
            assert not isinstance(self.adapter, ASGIHandler)  # then self.asgi runs it
            inv = self.adapter.prepare(req)
        except Exception:
            log.exception("request %s/%s could not be prepared", link.gateway_id, rid)
            self.send(link, server_error(rid, f"{link.gateway_id}/{rid}"))
            return
        if inv.inline:
            self._run_sync(link, rid, req, inv, self._send_pair)
        elif inv.is_async:
            self.loop.create_task(self._run_async(link, rid, req, inv))
        else:
            self.pool.submit(partial(self._run_sync, link, rid, req, inv))

    def _run_sync(self, link: GatewayLink, rid: int, req: dict[str, Any], inv: Invocation,
                  emit: Emit[Outgoing]) -> None:
        """Runs in a pool thread (or inline for ready answers)."""
        began = time.perf_counter()
        try:
            msg, ops = settle(inv, inv.fn(*inv.args, **inv.kwargs))
            if ops:
                self.state.call(ops)  # the answer waits until the writes are durable
            if msg is realtime.DEFER:
                self.metrics.record((inv.route, "deferred"), time.perf_counter() - began)
                emit((link, wire.envelope(wire.DEFERRED, id=rid)))
                return
            status, headers, body = normalize(msg)
            if isinstance(body, bytes):
                env = self._whole(rid, req, status, headers, body)
            else:
                stream = StreamEnvelopes(rid, status, headers)
        except Exception as exc:
            emit((link, self._failure(rid, req, exc, inv.route, began)))
            return
        self.metrics.record((inv.route, status), time.perf_counter() - began)
        if isinstance(body, bytes):
            emit((link, env))
        elif hasattr(body, "__anext__"):
            # An async generator from a sync handler: it can only run on the loop.
            emit((link, {"k": "_stream", "id": rid, "stream": stream, "body": body,
                         "req": req}))
        else:
            window = self.streams.open(link.gateway_id, rid)
            try:
                for chunk in body:
                    env = stream.chunk(chunk)
                    window.sent(len(env["body"]))
                    emit((link, env))
                    if window.blocked() and not window.wait_sync(
                            self.config.stream_stall_timeout):
                        self._stalled(req)
                        window.client_gone()
                    if window.gone:
                        break
            except Exception as exc:
                self._log_failure(req, exc)
                emit((link, stream.failed(req["id"])))
                return
            finally:
                self.streams.close(link.gateway_id, rid)
            if window.gone:
                getattr(body, "close", lambda: None)()  # run the generator's finally
                emit((link, stream.failed(req["id"])))
                return
            emit((link, stream.end()))

    async def _run_async(self, link: GatewayLink, rid: int, req: dict[str, Any],
                         inv: Invocation) -> None:
        began = time.perf_counter()
        try:
            msg, ops = settle(inv, await inv.fn(*inv.args, **inv.kwargs))
            if ops:
                await self.state.acall(ops)
            if msg is realtime.DEFER:
                self.metrics.record((inv.route, "deferred"), time.perf_counter() - began)
                self.send(link, wire.envelope(wire.DEFERRED, id=rid))
                return
            status, headers, body = normalize(msg)
            if isinstance(body, bytes):
                env = self._whole(rid, req, status, headers, body)
            else:
                stream = StreamEnvelopes(rid, status, headers)
        except Exception as exc:
            self.send(link, self._failure(rid, req, exc, inv.route, began))
            return
        self.metrics.record((inv.route, status), time.perf_counter() - began)
        if isinstance(body, bytes):
            self.send(link, env)
        else:
            await self._stream_async(link, rid, req, stream, body)

    def _whole(self, rid: int, req: dict[str, Any], status: int, headers: list[list[str]],
               body: bytes) -> dict[str, Any]:
        """A whole response's envelope (see `messages.response`)."""
        return response(rid, status, headers, body, request_headers=req["raw_headers"],
                        gzip_min_size=self.config.gzip_min_size)

    async def _stream_async(self, link: GatewayLink, rid: int, req: dict[str, Any],
                            stream: StreamEnvelopes, body: Any) -> None:
        window = self.streams.open(link.gateway_id, rid)
        chunks = body if hasattr(body, "__anext__") else _aiter(body)
        try:
            async for chunk in chunks:
                env = stream.chunk(chunk)
                window.sent(len(env["body"]))
                self.send(link, env)
                if window.blocked():
                    try:
                        await asyncio.wait_for(window.wait(),
                                               self.config.stream_stall_timeout)
                    except TimeoutError:
                        self._stalled(req)
                        window.client_gone()
                if window.gone:
                    break
        except Exception as exc:
            self._log_failure(req, exc)
            self.send(link, stream.failed(req["id"]))
            return
        finally:
            self.streams.close(link.gateway_id, rid)
        if window.gone:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()  # run the generator's finally
            else:
                getattr(body, "close", lambda: None)()
            self.send(link, stream.failed(req["id"]))
            return
        self.send(link, stream.end())

    def _stalled(self, req: dict[str, Any]) -> None:
        log.warning("request %s: the client took nothing of the stream for %.0fs; cut",
                    req["id"], self.config.stream_stall_timeout,
                    extra={"request_id": req["id"]})

    def client_gone(self, link: GatewayLink, rid: int) -> None:
        if self.asgi is None or not self.asgi.client_gone(link, rid):
            self.streams.client_gone(link.gateway_id, rid)

    def _failure(self, rid: int, req: dict[str, Any], exc: Exception, route: str,
                 began: float) -> dict[str, Any]:
        """The response for a handler that failed: 503 when the shared state is out
        of reach (the client may retry), 500 for everything else."""
        self.metrics.failed(route, exc)
        if isinstance(exc, StateUnavailable):
            log.warning("request %s: shared state unavailable: %s; 503", req["id"], exc,
                        extra={"request_id": req["id"]})
            self.metrics.record((route, 503), time.perf_counter() - began)
            return response(rid, 503, [["content-type", "text/plain; charset=utf-8"],
                                       ["retry-after", "1"]],
                            b"Service Unavailable: shared state unreachable\n")
        self._log_failure(req, exc)
        self.metrics.record((route, 500), time.perf_counter() - began)
        return server_error(rid, req["id"])

    def _log_failure(self, req: dict[str, Any], exc: Exception) -> None:
        extra = {"request_id": req["id"]}
        if isinstance(exc, (BadResponse, BadField)):
            log.error("request %s: handler returned a bad response: %s", req["id"], exc,
                      extra=extra)
        elif isinstance(exc, StateError):
            log.error("request %s: state operation refused: %s", req["id"], exc, extra=extra)
        else:
            log.error("request %s: handler raised", req["id"], exc_info=exc, extra=extra)

    # -- responses -------------------------------------------------------------
    def _emitted(self, batch: list[Outgoing]) -> None:
        for link, env in batch:
            if env["k"] == "_stream":
                self.loop.create_task(self._stream_async(
                    link, env["id"], env["req"], env["stream"], env["body"]))
            else:
                self.send(link, env)

    def _send_pair(self, pair: Outgoing) -> None:
        self.send(pair[0], pair[1])

    def send(self, link: GatewayLink, env: dict[str, Any]) -> None:
        link.post(env)
        if not env.get("more"):  # a final response, or DEFERRED: the call is over
            self.running -= 1
            if self.backlog and self.running < self.config.concurrency:
                self._start(*self.backlog.popleft())

    # -- WebSocket -------------------------------------------------------------
    def ws_event(self, link: GatewayLink, env: dict[str, Any]) -> None:
        if self.asgi is not None:
            if env["k"] in WS_HANDOVER:
                log.warning("an ASGI app cannot shard; %s ignored", env["k"])
                return
            kind = WS_KINDS[env["k"]]
            self.ws_events[kind] = self.ws_events.get(kind, 0) + 1
            self.asgi.ws_event(link, kind, env)
            return
        key = f"{link.gateway_id}/{env['conn']}"
        # A sharded connection's events queue with its shard's, so a room's messages
        # run one at a time in arrival order; the queue is known from the adoption on.
        k = env["k"]
        if k == wire.WS_ADOPT:
            self.ws_shard_queue[key] = "\0" + env["shard"]
        queue = self.ws_shard_queue.pop(key, key) if k in (wire.WS_CLOSED, wire.WS_RELEASE) \
            else self.ws_shard_queue.get(key, key)
        self.ws_queues.submit(queue, (link, env))

    async def _run_ws(self, item: tuple[GatewayLink, dict[str, Any]]) -> None:
        link, env = item
        number: int = env["conn"]
        key = f"{link.gateway_id}/{number}"
        if env["k"] == wire.WS_ADOPT:
            self.ws_info[key] = {**connect_ws_info(env), "shard": env["shard"]}
            return
        if env["k"] == wire.WS_RELEASE:
            self.ws_info.pop(key, None)
            return
        kind = WS_KINDS[env["k"]]
        self.ws_events[kind] = self.ws_events.get(kind, 0) + 1
        if kind == "ws.connect":
            self.ws_info[key] = connect_ws_info(env)
        info = self.ws_info.get(key)
        if info is None:
            return  # an event after the close of a connection we never accepted
        req = build_ws_request(kind, key, info, env)
        assert not isinstance(self.adapter, ASGIHandler)  # ws_event sent those elsewhere
        try:
            inv = self.adapter.prepare_ws(req)
            if inv.is_async:
                result = await inv.fn(*inv.args, **inv.kwargs)
            elif inv.inline:
                result = inv.fn(*inv.args, **inv.kwargs)
            else:
                result = await self.loop.run_in_executor(
                    None, partial(inv.fn, *inv.args, **inv.kwargs))
            msg, ops = settle(inv, result)
            if ops:
                await self.state.acall(ops)
            actions = reply_actions(kind, number, msg)
        except Exception as exc:
            self._log_failure(req, exc)
            # 1011 after a connection was accepted; a refusal before.
            actions = [wire.reject(number, 500)] if kind == "ws.connect" else \
                [wire.close(number, 1011, "internal error")]
        if kind == "ws.close" or (actions and (actions[0][0] == wire.REJECT or (
                actions[0][0] == wire.ACCEPT and actions[0][4] is not None))):
            # Closed, refused, or accepted into a shard: the gateway hands that
            # connection to the shard's worker (this one again, perhaps) with WS_ADOPT.
            self.ws_info.pop(key, None)
        if kind == "ws.message":
            actions.append(wire.ack(number))  # the gateway may read the client again
        if actions:
            link.post(wire.envelope(wire.WS_ACTIONS, actions=actions))

    # -- cluster.push runtime ------------------------------------------------------
    def act(self, gateway_id: str, action: list[Any]) -> bool:
        """Send one WebSocket action (a `wire` action) to a gateway."""
        if threading.get_ident() != self.loop_thread:
            self.loop.call_soon_threadsafe(self._act, gateway_id, action)
            return gateway_id in self.links
        return self._act(gateway_id, action)

    def broadcast(self, group: str, data: str | bytes,
                  exclude: tuple[str, int] | None) -> None:
        """To every gateway, which fans out to its members of `group`; `exclude` is a
        connection (gateway, number) that is not sent to."""
        if threading.get_ident() != self.loop_thread:
            self.loop.call_soon_threadsafe(self.broadcast, group, data, exclude)
            return
        for gid, link in self.links.items():
            skip = exclude[1] if exclude is not None and exclude[0] == gid else None
            link.post(wire.envelope(wire.WS_ACTIONS,
                                    actions=[wire.broadcast(group, data, skip)]))

    def _act(self, gateway_id: str, action: list[Any]) -> bool:
        target = self.links.get(gateway_id)
        if target is None:
            log.info("push to a connection of gateway %s, which this worker does not know",
                     gateway_id)
            return False
        target.post(wire.envelope(wire.WS_ACTIONS, actions=[action]))
        return True

    def reply(self, gateway_id: str, number: int, msg: Any) -> bool:
        """cluster.reply: the answer to a deferred request, whole (no streaming)."""
        status, headers, body = normalize(msg)
        if not isinstance(body, bytes):
            raise BadResponse("a deferred reply cannot be streamed")
        try:
            head = encode_fields(headers)[0]
        except BadField as exc:
            raise BadResponse(str(exc)) from None
        env = wire.envelope(wire.DEFERRED_REPLY, id=number, status=status, head=head,
                            body=body)
        if threading.get_ident() != self.loop_thread:
            self.loop.call_soon_threadsafe(self._post_to_gateway, gateway_id, env)
            return gateway_id in self.links
        return self._post_to_gateway(gateway_id, env)

    def publish(self, group: str, data: Any) -> None:
        """cluster.publish: to the coordinator, which numbers, keeps and fans out."""
        if isinstance(self.coordinator, CoordinatorLink):
            env = wire.envelope(wire.HISTORY_PUBLISH, id=self.id, group=group, data=data)
            if threading.get_ident() != self.loop_thread:
                self.loop.call_soon_threadsafe(self.coordinator.post, env)
            else:
                self.coordinator.post(env)
            return
        # On etcd there is no coordinator to number messages (not built yet): a plain
        # broadcast, without offsets, said once.
        if not self._said_no_history:
            self._said_no_history = True
            log.warning("cluster.publish on --state-backend etcd: no history there yet; "
                        "sent as a plain broadcast")
        self.broadcast(group, realtime.frame_data(data), None)

    def _post_to_gateway(self, gateway_id: str, env: dict[str, Any]) -> bool:
        link = self.links.get(gateway_id)
        if link is None:
            log.info("reply for gateway %s, which this worker does not know", gateway_id)
            return False
        link.post(env)
        return True

    def on_loop(self) -> bool:
        return threading.get_ident() == self.loop_thread

    def members_blocking(self, group: str) -> list[str]:
        """From a handler thread: ask on the loop, wait here."""
        future = asyncio.run_coroutine_threadsafe(self.members(group), self.loop)
        return future.result(self.config.state_timeout + 1.0)

    async def members(self, group: str) -> list[str]:
        self._query_rid += 1
        rid = self._query_rid
        fut: asyncio.Future[list[str]] = self.loop.create_future()
        waiting = set(self.links)
        self._queries[rid] = (fut, waiting, [])
        for link in self.links.values():
            link.post(wire.envelope(wire.WS_QUERY, rid=rid, group=group))
        if not waiting:
            fut.set_result([])
        try:
            return await asyncio.wait_for(fut, self.config.state_timeout)
        except TimeoutError:
            # A gateway that does not answer: report who did answer.
            return sorted(self._queries[rid][2])
        finally:
            self._queries.pop(rid, None)

    def on_query_reply(self, gateway_id: str, msg: dict[str, Any]) -> None:
        query = self._queries.get(msg["rid"])
        if query is None:
            return
        fut, waiting, found = query
        found.extend(f"{gateway_id}/{n}" for n in msg["conns"] if isinstance(n, int))
        waiting.discard(gateway_id)
        if not waiting and not fut.done():
            fut.set_result(sorted(found))

    async def stop(self) -> None:
        """Drain: credit 0 on every link; once every gateway has answered that (nothing
        more is on its way) and what we hold is done, or --shutdown-grace is over,
        BYE to each gateway and leave."""
        self.stopping = True
        for link in self.links.values():
            link.drain()
        deadline = self.loop.time() + self.config.shutdown_grace
        while not (all(link.drained for link in self.links.values()) and
                   not self.running and not self.backlog):
            if self.loop.time() >= deadline:
                log.warning("stopping with %d requests unfinished (--shutdown-grace %gs)",
                            self.running + len(self.backlog), self.config.shutdown_grace)
                break
            await asyncio.sleep(0.02)  # poll: bounded by the grace period
        if isinstance(self.adapter, ASGIHandler):
            await self.adapter.lifespan.shutdown(self.config.lifespan_timeout)
        for task in self._tasks:
            task.cancel()
        for link in self.links.values():
            # Our last responses and the BYE still go out, if the gateway is there.
            link.post(wire.envelope(wire.BYE, id=self.id))
            # A live gateway reads them within an interval; one that said BYE reads none.
            link.close(linger=0.0 if link.gone else self.config.heartbeat_interval)
        self.state.close()
        self.coordinator.close()
        await self.coordinator.wait_closed()
        self.metrics_server.close()
        # Threads still in a handler past the grace are not waited for: we exit.
        self.pool.shutdown(timeout=max(0.0, deadline - self.loop.time()))


def pin(cpu: int) -> None:
    """Keep this process's threads on one CPU. Called before any thread starts (the
    ZeroMQ thread, the handler pool): threads inherit the affinity of their maker.
    A worker's Python runs on one core at a time (the GIL); a sync handler's hand-off
    between the loop and a pool thread costs less when both stay on one core's cache
    and no cross-core wake-up is needed (measured in docs/performance.md)."""
    allowed = os.sched_getaffinity(0)
    if cpu not in allowed:
        raise ConfigError(f"--cpu {cpu}: this process may use CPUs {sorted(allowed)}")
    os.sched_setaffinity(0, {cpu})


def serve(config: WorkerConfig) -> None:
    if config.cpu >= 0:
        pin(config.cpu)
    security = for_process(config.keys, config.key_name, config.insecure, "worker",
                           wait=config.start_timeout)
    handler = load_handler(config.handler)  # fails before any socket is opened
    worker_id = f"wk-{uuid.uuid4().hex[:12]}"

    async def main(stop: asyncio.Event) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        worker = Worker(config, asyncio.get_running_loop(), ctx, handler, worker_id, security)
        if isinstance(worker.adapter, ASGIHandler):
            try:  # before any request can come: startup is the app's to finish first
                await worker.adapter.lifespan.startup(config.lifespan_timeout)
            except LifespanError as exc:
                ctx.destroy(linger=0)
                raise HandlerLoadError(str(exc)) from None
        metrics = await worker.start_metrics()
        if metrics:
            worker.coordinator.info["metrics"] = metrics
        worker.start()
        try:
            await unless_stopped(worker.coordinator.wait_registered(), stop)
        except StoppedWhileStarting:
            ctx.destroy(linger=0)
            raise
        realtime.install(worker)
        if not await worker.connected(config.start_timeout, stop):
            log.warning("not yet registered with every gateway; serving as they answer")
        report_ready(config.ready_fd, {"role": "worker", "id": worker.id,
                                       "handler": worker.adapter.kind, "metrics": metrics})
        log.info("worker %s running %s (%s)", worker.id, config.handler, worker.adapter.kind)
        await stop.wait()
        await worker.stop()
        ctx.term()

    run_until_signalled(main, config.ready_fd, config.heartbeat_interval)
