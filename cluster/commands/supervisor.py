"""`cluster run`: start a coordinator, gateways and workers as child processes.

Each child is the ordinary command (`python -m cluster gateway ...`) with its
configuration as flags, plus a pipe on which it reports readiness as one JSON line
and then beats (`cluster.plumbing.child`). A child that exits unexpectedly, or whose beats
stop for `--child-timeout` (it hangs: killed), is started again after a backoff
that doubles up to `MAX_BACKOFF` and resets once the child has stayed up for
`STABLE_AFTER`; its ports are pinned to the ones it first bound, so peers find it
again. SIGHUP, or a changed file under `--reload`, replaces the workers one at a
time (`RollingRestart`). SIGINT or SIGTERM stops gateways first (they drain), then
workers, then the coordinator. With `--state-backend` there is no coordinator.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cluster import compiled
from cluster.commands.run_keys import RunKeys
from cluster.errors import ChildFailed
from cluster.plumbing.child import MIN_BACKOFF, Child
from cluster.plumbing.config import (
    CoordinatorConfig,
    GatewayConfig,
    RunConfig,
    WorkerConfig,
    subset,
    to_argv,
)
from cluster.plumbing.security import ROLE_KEYS, keygen

log = logging.getLogger("cluster.supervisor")

READY_TIMEOUT = 30.0  # a child's start: imports, handler load, links, ASGI startup
MAX_BACKOFF = 10.0
STABLE_AFTER = 10.0
STOP_TIMEOUT = 15.0
POLL = 0.1  # the watch loop's tick: the pipes are read as they fill, this bounds a turn


def child_command(role: str, config: Any) -> list[str]:
    return [sys.executable, "-m", "cluster", role, *to_argv(config)]


class RollingRestart:
    """Replace workers one at a time: start the new one, wait until it is ready (linked
    to every gateway, its state synced), then SIGTERM the old one, which drains (credit
    0, finishes what it holds, leaves) before the next is started. One step per tick of
    the supervisor's loop, so it keeps watching every other child meanwhile."""

    def __init__(self, supervisor: Supervisor, old: list[Child]) -> None:
        self.supervisor = supervisor
        self.queue = list(old)
        self.old: Child | None = None
        self.new: Child | None = None
        self.deadline = 0.0
        self.replaced = 0

    def step(self, now: float) -> bool:
        """Advance; True once every worker is replaced (or the roll gave up)."""
        sup = self.supervisor
        if self.new is None:
            while self.queue and not self.queue[0].running():
                self.queue.pop(0)  # died meanwhile: its own restart replaces it
            if not self.queue:
                log.info("rolling restart done: %d workers replaced", self.replaced)
                return True
            self.old = self.queue.pop(0)
            self.new = Child(self.old.name, "worker", self.old.argv)
            sup.children.append(self.new)
            self.new.spawn()
            self.deadline = now + READY_TIMEOUT
            return False
        old = self.old
        assert old is not None and old.proc is not None
        if not old.retiring:
            if self.new.ready is not None:
                log.info("%s pid %d ready; draining pid %d", self.new.name,
                         self.new.proc.pid if self.new.proc else 0, old.proc.pid)
                old.retiring = True
                old.proc.send_signal(signal.SIGTERM)
                self.deadline = now + sup.config.shutdown_grace + STOP_TIMEOUT
            elif not self.new.running() or now > self.deadline:
                # Keep the old one serving: a new worker that cannot start is no
                # reason to lose the one that runs (a --reload with a syntax error).
                log.error("rolling restart stopped: the new %s did not become ready; "
                          "pid %d keeps serving", self.new.name, old.proc.pid)
                if self.new.running():
                    assert self.new.proc is not None
                    self.new.proc.kill()
                    self.new.proc.wait()
                self.new.close_pipe()
                sup.children.remove(self.new)
                return True
            return False
        if old.proc.poll() is None and now > self.deadline:
            log.warning("%s pid %d did not drain in time; killing it", old.name, old.proc.pid)
            old.proc.kill()
        if old.proc.poll() is None:
            return False
        old.close_pipe()
        sup.children.remove(old)
        self.replaced += 1
        self.old = self.new = None
        return False


class Supervisor:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.children: list[Child] = []
        self.stopping = False
        self.roll_wanted = False  # SIGHUP, or a changed file under --reload
        self.roll: RollingRestart | None = None
        self.discovery = ""  # the coordinator's metrics host:port, serving /targets
        self.endpoint = ""  # the coordinator's ZeroMQ endpoint (scripts' Publisher)
        self.own_keys: RunKeys | None = None  # a key directory we made, removed at stop
        self.reloader: threading.Thread | None = None
        self.reloader_stop = threading.Event()
        self.reloader_ready = threading.Event()

    def _stop_asked(self) -> bool:
        return self.stopping

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.roll_wanted = True
        else:
            self.stopping = True

    def _keys(self) -> None:
        """Secure with no set-up: a key pair per role in --keys (made there if
        missing), or in a private directory of our own, removed when we stop."""
        config = self.config
        if config.insecure:
            return
        directory = config.keys
        if not directory:
            self.own_keys = RunKeys()
            directory = self.own_keys.make()
        keygen(directory, ROLE_KEYS)
        self.config = subset(config, RunConfig, keys=directory)

    def _spawn(self, name: str, role: str, config: Any) -> Child:
        child = Child(name, role, child_command(role, config))
        self.children.append(child)
        child.spawn()
        return child

    def _start_coordinator(self) -> str:
        """The embedded coordinator (no --state-backend): its ZeroMQ endpoint."""
        config = self.config
        port = config.coordinator_port or "*"
        coord_cfg = subset(config, CoordinatorConfig, ready_fd=-1,
                           coordinator_bind=f"tcp://127.0.0.1:{port}")
        coordinator = self._spawn("coordinator", "coordinator", coord_cfg)
        ready = coordinator.wait_ready(READY_TIMEOUT, self._stop_asked)
        endpoint: str = ready["endpoint"]
        # Pin the port: a restarted coordinator must be found where it was.
        coordinator.argv = child_command("coordinator", subset(
            coord_cfg, CoordinatorConfig, coordinator_bind=endpoint,
            metrics_port=ready.get("metrics_port", config.metrics_port)))
        self.discovery = ready.get("metrics", "")
        return endpoint

    def start(self) -> list[str]:
        """The coordinator first (everyone needs its endpoint), then the gateways and
        workers together: a gateway opens its HTTP port once a worker is linked
        (--wait-for-worker), so they must not wait for each other in turn."""
        self._keys()
        config = self.config
        endpoint = self._start_coordinator() if not config.state_backend else config.coordinator
        self.endpoint = "" if config.state_backend else endpoint

        gateways = []
        for i in range(config.gateways):
            gw_port = config.port + i if config.port else 0
            # --metrics-port names the coordinator's (the discovery endpoint); the
            # others take any free port, which discovery lists.
            gw_cfg = subset(config, GatewayConfig, ready_fd=-1, coordinator=endpoint,
                            port=gw_port, metrics_port=min(config.metrics_port, 0),
                            wait_for_worker=config.workers > 0)
            gateways.append((self._spawn(f"gateway-{i + 1}", "gateway", gw_cfg), gw_cfg))

        wk_cfg = subset(config, WorkerConfig, ready_fd=-1, coordinator=endpoint,
                        metrics_port=min(config.metrics_port, 0))
        cpus = sorted(os.sched_getaffinity(0))
        workers = []
        for i in range(config.workers):
            if config.pin_workers:
                # Round robin, starting after the gateways' share: a worker's Python
                # runs on one core at a time anyway (see WorkerConfig.cpu).
                wk_cfg = subset(wk_cfg, WorkerConfig,
                                cpu=cpus[(config.gateways + i) % len(cpus)])
            workers.append(self._spawn(f"worker-{i + 1}", "worker", wk_cfg))

        urls = []
        for gateway, gw_cfg in gateways:
            ready = gateway.wait_ready(READY_TIMEOUT + config.start_timeout, self._stop_asked)
            bound = ready["port"]
            if not self.discovery:  # on etcd, every gateway serves discovery
                self.discovery = ready.get("metrics", "")
            gateway.argv = child_command("gateway", subset(gw_cfg, GatewayConfig, port=bound))
            urls.append(f"{'https' if config.certfile else 'http'}://{config.host}:{bound}")
        for worker in workers:
            worker.wait_ready(READY_TIMEOUT, self._stop_asked)
        return urls

    def watch(self) -> None:
        """Read the children's pipes; restart the ones that die or hang; roll the
        workers when asked; until a signal asks us to stop."""
        while not self.stopping:
            fds = [c.fd for c in self.children if c.fd >= 0]
            if fds:
                select.select(fds, [], [], POLL)
            else:
                time.sleep(POLL)
            now = time.monotonic()
            for child in list(self.children):
                child.read(now)
                self._check(child, now)
            if self.roll is None and self.roll_wanted:
                self.roll_wanted = False
                workers = [c for c in self.children if c.role == "worker"]
                log.info("rolling restart of %d workers", len(workers))
                self.roll = RollingRestart(self, workers)
            if self.roll is not None and self.roll.step(now):
                self.roll = None

    def _check(self, child: Child, now: float) -> None:
        """Restart a child that died (after its backoff) or kill one that hangs."""
        if child.retiring:
            return  # a rolling restart owns it
        if child.restart_at is not None:
            if now >= child.restart_at:
                child.restart_at = None
                child.restarts += 1
                child.spawn()
            return
        proc = child.proc
        if proc is None:
            return
        if proc.poll() is None:
            if now - child.started_at > STABLE_AFTER:
                child.backoff = MIN_BACKOFF
            limit = self.config.child_timeout if child.last_beat else READY_TIMEOUT
            silent = child.silent_for(now)
            if silent > limit:
                # SIGKILL: a stopped or deadlocked process cannot act on SIGTERM.
                log.error("%s (pid %d) gave no sign of life for %.1fs (--child-timeout); "
                          "killing it", child.name, proc.pid, silent)
                proc.kill()
                proc.wait()
            else:
                return
        log.warning("%s (pid %d) exited with code %s; restarting in %.1fs",
                    child.name, proc.pid, proc.returncode, child.backoff)
        child.close_pipe()
        child.restart_at = now + child.backoff
        child.backoff = min(child.backoff * 2, MAX_BACKOFF)

    def stop(self) -> None:
        self.reloader_stop.set()
        for role in ("gateway", "worker", "coordinator"):
            group = [c for c in self.children if c.role == role and c.running()]
            for child in group:
                assert child.proc is not None
                child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.config.shutdown_grace + STOP_TIMEOUT
            for child in group:
                assert child.proc is not None
                try:
                    child.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in time; killing it", child.name)
                    child.proc.kill()
                    child.proc.wait()
        for child in self.children:
            child.close_pipe()

    def _watch_files(self, root: str) -> None:
        """--reload: a changed Python file under `root` rolls the workers."""
        import watchfiles  # only --reload needs it

        log.info("--reload: watching %s for changed Python files", root)
        # An empty yield after a quiet spell (yield_on_timeout) is the sign that the
        # watch is in place: `run` waits for it before it says the cluster is up, so
        # an edit made right after that is not missed.
        for changes in watchfiles.watch(root, watch_filter=watchfiles.PythonFilter(),
                                        stop_event=self.reloader_stop, raise_interrupt=False,
                                        rust_timeout=200, yield_on_timeout=True):
            self.reloader_ready.set()
            if not changes:
                continue
            base = root if os.path.isdir(root) else os.path.dirname(root)  # a lone module
            names = sorted({os.path.relpath(path, base) for _change, path in changes})
            log.info("--reload: %s changed; rolling the workers", ", ".join(names[:5]))
            self.roll_wanted = True

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        try:
            if self.config.reload:
                # Watching before anything serves: an edit made as soon as the first
                # answer comes is seen (it rolls the workers once they are up).
                root = handler_root(self.config.handler)
                self.reloader = threading.Thread(target=self._watch_files, args=(root,),
                                                 name="reload", daemon=True)
                self.reloader.start()
                if not self.reloader_ready.wait(10):
                    log.warning("--reload: the watch did not start within 10s")
            urls = self.start()
        except ChildFailed as exc:
            log.error("%s", exc)
            self.stop()
            if self.own_keys is not None:
                self.own_keys.remove()
            return 1
        gateways, workers = self.config.gateways, self.config.workers
        print(f"cluster: {self.config.handler} on {', '.join(urls)} "
              f"({gateways} gateway{'s' * (gateways != 1)}, "
              f"{workers} worker{'s' * (workers != 1)}; {compiled.MODE})", flush=True)
        if self.discovery:
            print(f"cluster: Prometheus discovery on http://{self.discovery}/targets",
                  flush=True)
        if self.config.keys:
            print(f"cluster: CURVE keys in {self.config.keys} (publisher.key_secret for "
                  f"scripts{'; removed at exit' if self.own_keys else ''})", flush=True)
        if self.endpoint:
            keys = f", keys={self.config.keys!r}" if self.config.keys else ", insecure=True"
            print(f"cluster: coordinator on {self.endpoint}; from a script: "
                  f"Publisher({self.endpoint!r}{keys})", flush=True)
        try:
            self.watch()
        finally:
            log.info("stopping")
            self.stop()
            if self.own_keys is not None:
                self.own_keys.remove()
        return 0


def handler_root(handler: str) -> str:
    """The directory of the handler's top-level package (or its module's file), found
    without importing it: what --reload watches."""
    top = handler.partition(":")[0].split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or (spec.origin is None and not spec.submodule_search_locations):
        raise ChildFailed(f"--reload: cannot find the module {top!r}")
    if spec.submodule_search_locations:
        return str(next(iter(spec.submodule_search_locations)))
    assert spec.origin is not None
    return str(Path(spec.origin))
