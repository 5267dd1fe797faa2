"""The worker process: membership, a link to every gateway, readiness and the drain.
Its parts live beside it, each given only what it uses: a runner, chosen once by
what the handler is (`requests.py` for native handlers, with `ws_events.py`;
`asgi_runner.py` for an ASGI app; what both share is `runner.py`), `push.py` (the
push runtime), `gateway_link.py` (one gateway's link) and `metrics.py`.

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
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from cluster import compiled, realtime
from cluster.app import App
from cluster.errors import (
    ConfigError,
    HandlerLoadError,
    LifespanError,
    StoppedWhileStarting,
)
from cluster.etcd.membership import EtcdMembership
from cluster.etcd.publisher import EtcdPublisher
from cluster.etcd.state import EtcdState
from cluster.plumbing import wire
from cluster.plumbing.config import WorkerConfig
from cluster.plumbing.coordinator_link import CoordinatorLink, MemberLink
from cluster.plumbing.lifecycle import report_ready, run_until_signalled, unless_stopped
from cluster.plumbing.metrics import MetricsServer, metrics_page, target
from cluster.plumbing.security import Plaintext, Security, for_process
from cluster.worker.asgi import ASGIHandler
from cluster.worker.asgi_runner import AsgiRunner
from cluster.worker.gateway_link import GatewayLink
from cluster.worker.loader import load_handler, make_adapter
from cluster.worker.metrics import WorkerMetrics
from cluster.worker.outcomes import HandlerOutcomes
from cluster.worker.push import Push
from cluster.worker.requests import NativeRunner
from cluster.worker.runner import Runner
from cluster.worker.state_client import StateClient

log = logging.getLogger("cluster.worker")


class Worker:
    def __init__(self, config: WorkerConfig, loop: asyncio.AbstractEventLoop,
                 zmq_context: zmq.Context[zmq.Socket[bytes]], handler: App | Callable[..., Any],
                 worker_id: str, security: Security | None = None) -> None:
        self.config = config
        self.security = security if security is not None else Plaintext()
        self.loop = loop
        self.zmq_context = zmq_context
        self.id = worker_id
        # Framework keys of the state (upper case, read-only), kept from membership.
        self.framework: dict[str, Any] = {"WORKER": worker_id, "GATEWAYS": [], "WORKERS": []}
        self.links: dict[str, GatewayLink] = {}
        self.stopping = False
        info = {"pid": os.getpid(), "handler": config.handler}
        self.coordinator: MemberLink
        self.state: StateClient | EtcdState
        # cluster.publish on etcd: puts numbered by etcd (on the coordinator, it numbers)
        self.etcd_publisher: EtcdPublisher | None = None
        history: CoordinatorLink | EtcdPublisher
        if config.state_backend:
            self.coordinator = EtcdMembership(config, self.id, "worker", info, self,
                                              security=self.security)
            self.state = EtcdState(loop, config, self.framework)
            self.etcd_publisher = history = EtcdPublisher(loop, self.state.target,
                                                          config.state_timeout)
            self.state.links = self.links  # to reach the sequencer gateway
            self.state.worker_id = self.id
        else:
            link = CoordinatorLink(config, zmq_context, self.id, "worker", info, self,
                                   security=self.security)
            self.coordinator = history = link
            self.state = StateClient(loop, zmq_context, link, config.state_timeout, self.framework)
        self.adapter = make_adapter(handler, self.state)
        self._tasks: list[asyncio.Task[Any]] = []
        self.outcomes = HandlerOutcomes()
        # How requests and WebSocket events run, chosen once: an ASGI app runs both
        # kinds itself; native handlers run here, sync ones on a thread pool.
        self.runner: Runner = \
            AsgiRunner(loop, config, self.outcomes, self.state, self.adapter) \
            if isinstance(self.adapter, ASGIHandler) else \
            NativeRunner(loop, config, self.outcomes, self.state, self.adapter)
        # cluster.push, broadcast, publish, reply, members
        self.push = Push(loop, self.id, self.links, history, config.state_timeout)
        self.metrics = WorkerMetrics(self.outcomes, self.runner, self.links, self.state,
                                     self.push, self.etcd_publisher, self.coordinator)
        self.metrics_server = MetricsServer({"/metrics": metrics_page(self.metrics.registry)},
                                            ready=self.readiness)
        self.gateways: dict[str, tuple[str, str]] = {}  # from membership: endpoint, key

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

    # -- membership (this worker is its link's MembershipWatcher) ---------------
    def on_coordinator(self, msg: dict[str, Any]) -> None:
        """State acks, snapshots and MEMBERS (its state info) are the state client's."""
        if isinstance(self.state, StateClient):
            self.state.on_coordinator(msg)

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
                    self.links[gid] = GatewayLink(
                        gid, endpoint, str(key).encode(), worker_id=self.id,
                        config=self.config, loop=self.loop, zmq_context=self.zmq_context,
                        security=self.security, runner=self.runner, push=self.push,
                        etcd_state=self.state if isinstance(self.state, EtcdState) else None)
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
                    self.push.view.gateway_gone(gid)
                    if isinstance(self.state, EtcdState):
                        self.state.on_gateway_gone(gid)
                else:
                    link.heartbeat()

    async def stop(self) -> None:
        """Drain: credit 0 on every link; once every gateway has answered that (nothing
        more is on its way) and what we hold is done, or --shutdown-grace is over,
        BYE to each gateway and leave."""
        self.stopping = True
        for link in self.links.values():
            link.drain()
        deadline = self.loop.time() + self.config.shutdown_grace
        while not (all(link.drained for link in self.links.values()) and
                   self.runner.idle):
            if self.loop.time() >= deadline:
                log.warning("stopping with %d requests unfinished (--shutdown-grace %gs)",
                            self.runner.running + len(self.runner.backlog),
                            self.config.shutdown_grace)
                break
            await asyncio.sleep(0.02)  # poll: bounded by the grace period
        if isinstance(self.adapter, ASGIHandler):
            await self.adapter.lifespan.shutdown(self.config.lifespan_timeout)
        for task in self._tasks:
            task.cancel()
        if self.etcd_publisher is not None:  # published before the stop: still sent
            await self.etcd_publisher.drain(max(0.0, deadline - self.loop.time()))
            await self.etcd_publisher.close()
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
        self.runner.close(timeout=max(0.0, deadline - self.loop.time()))


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
    handler = load_handler(config.handler, config.app_dir)  # fails before any socket opens
    worker_id = f"wk-{uuid.uuid4().hex[:12]}"

    async def main(stop: asyncio.Event) -> None:
        zmq_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        worker = Worker(config, asyncio.get_running_loop(), zmq_context, handler, worker_id,
                        security)
        if isinstance(worker.adapter, ASGIHandler):
            try:  # before any request can come: startup is the app's to finish first
                await worker.adapter.lifespan.startup(config.lifespan_timeout)
            except LifespanError as exc:
                zmq_context.destroy(linger=0)
                raise HandlerLoadError(str(exc)) from None
        metrics = await worker.start_metrics()
        if metrics:
            worker.coordinator.info["metrics"] = metrics
        worker.start()
        try:
            await unless_stopped(worker.coordinator.wait_registered(), stop)
        except StoppedWhileStarting:
            zmq_context.destroy(linger=0)
            raise
        realtime.install(worker.push)
        if not await worker.connected(config.start_timeout, stop):
            log.warning("not yet registered with every gateway; serving as they answer")
        report_ready(config.ready_fd, {"role": "worker", "id": worker.id,
                                       "handler": worker.adapter.kind, "metrics": metrics,
                                       "build": compiled.MODE})
        log.info("worker %s running %s (%s; %s)", worker.id, config.handler,
                 worker.adapter.kind, compiled.MODE)
        await stop.wait()
        await worker.stop()
        zmq_context.term()

    run_until_signalled(main, config.ready_fd, config.heartbeat_interval)
