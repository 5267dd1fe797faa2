"""`cluster run`: start a coordinator, gateways and workers as child processes.

Each child is the ordinary command (`python -m cluster gateway ...`) with its
configuration as flags, plus a pipe on which it reports readiness as one JSON line.
A child that exits unexpectedly is started again after a backoff that doubles up to
`MAX_BACKOFF` and resets once the child has stayed up for `STABLE_AFTER`; its
ports are pinned to the ones it first bound, so peers find it again. SIGINT or
SIGTERM stops gateways first (they drain), then workers, then the coordinator.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from cluster.config import (
    CoordinatorConfig,
    GatewayConfig,
    RunConfig,
    WorkerConfig,
    subset,
    to_argv,
)
from cluster.errors import ClusterError
from cluster.security import ROLE_KEYS, keygen

log = logging.getLogger("cluster.supervisor")

READY_TIMEOUT = 30.0
MIN_BACKOFF = 0.5
MAX_BACKOFF = 10.0
STABLE_AFTER = 10.0
STOP_TIMEOUT = 15.0


class ChildFailed(ClusterError):
    """A child did not become ready."""


@dataclass
class Child:
    name: str
    role: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    backoff: float = MIN_BACKOFF
    restart_at: float | None = None
    restarts: int = 0

    def spawn(self, wait_ready: bool) -> None:
        read_fd, write_fd = os.pipe()
        argv = [*self.argv, "--ready-fd", str(write_fd)]
        self.proc = subprocess.Popen(argv, pass_fds=(write_fd,))
        os.close(write_fd)
        self.started_at = time.monotonic()
        log.info("started %s pid %d", self.name, self.proc.pid)
        if wait_ready:
            try:
                self.ready = read_ready(read_fd, self.proc, READY_TIMEOUT, self.name)
            finally:
                os.close(read_fd)
        else:
            os.close(read_fd)


def read_ready(fd: int, proc: subprocess.Popen[bytes], timeout: float,
               name: str) -> dict[str, Any]:
    """The JSON line a child writes on `fd` once it listens (see `--ready-fd`)."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ChildFailed(f"{name} did not become ready within {timeout:.0f}s")
        readable, _, _ = select.select([fd], [], [], min(left, 0.2))
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise ChildFailed(f"{name} exited before it was ready (code {proc.poll()})")
            data += chunk
        elif proc.poll() is not None:
            raise ChildFailed(f"{name} exited before it was ready (code {proc.returncode})")
    info: dict[str, Any] = json.loads(data.split(b"\n", 1)[0])
    return info


def child_command(role: str, config: Any) -> list[str]:
    return [sys.executable, "-m", "cluster", role, *to_argv(config)]


class Supervisor:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.children: list[Child] = []
        self.stopping = False
        self.discovery = ""  # the coordinator's metrics host:port, serving /targets
        self.own_keys = ""  # a key directory we made, removed when we stop

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stopping = True

    def _keys(self) -> None:
        """Secure with no set-up: a key pair per role in --keys (made there if
        missing), or in a private directory of our own, removed when we stop."""
        config = self.config
        if config.insecure:
            return
        directory = config.keys
        if not directory:
            directory = self.own_keys = tempfile.mkdtemp(prefix="cluster-keys-")
        keygen(directory, ROLE_KEYS)
        self.config = subset(config, RunConfig, keys=directory)

    def start(self) -> list[str]:
        self._keys()
        config = self.config
        port = config.coordinator_port or "*"
        coord_cfg = subset(config, CoordinatorConfig, ready_fd=-1,
                           coordinator_bind=f"tcp://127.0.0.1:{port}")
        coordinator = Child("coordinator", "coordinator", child_command("coordinator", coord_cfg))
        self.children.append(coordinator)
        coordinator.spawn(wait_ready=True)
        endpoint = coordinator.ready["endpoint"]
        # Pin the port: a restarted coordinator must be found where it was.
        coordinator.argv = child_command("coordinator", subset(
            coord_cfg, CoordinatorConfig, coordinator_bind=endpoint,
            metrics_port=coordinator.ready.get("metrics_port", config.metrics_port)))
        self.discovery = coordinator.ready.get("metrics", "")

        urls = []
        for i in range(config.gateways):
            gw_port = config.port + i if config.port else 0
            # --metrics-port names the coordinator's (the discovery endpoint); the
            # others take any free port, which discovery lists.
            gw_cfg = subset(config, GatewayConfig, ready_fd=-1, coordinator=endpoint,
                            port=gw_port, metrics_port=min(config.metrics_port, 0))
            gateway = Child(f"gateway-{i + 1}", "gateway", child_command("gateway", gw_cfg))
            self.children.append(gateway)
            gateway.spawn(wait_ready=True)
            bound = gateway.ready["port"]
            gateway.argv = child_command("gateway", subset(gw_cfg, GatewayConfig, port=bound))
            urls.append(f"http://{config.host}:{bound}")

        wk_cfg = subset(config, WorkerConfig, ready_fd=-1, coordinator=endpoint,
                        metrics_port=min(config.metrics_port, 0))
        cpus = sorted(os.sched_getaffinity(0))
        for i in range(config.workers):
            if config.pin_workers:
                # Round robin, starting after the gateways' share: a worker's Python
                # runs on one core at a time anyway (see WorkerConfig.cpu).
                wk_cfg = subset(wk_cfg, WorkerConfig,
                                cpu=cpus[(config.gateways + i) % len(cpus)])
            worker = Child(f"worker-{i + 1}", "worker", child_command("worker", wk_cfg))
            self.children.append(worker)
            worker.spawn(wait_ready=True)
        return urls

    def watch(self) -> None:
        """Restart children that die, until a signal asks us to stop."""
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                proc = child.proc
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        child.restart_at = None
                        child.restarts += 1
                        child.spawn(wait_ready=False)
                    continue
                if proc is None or proc.poll() is None:
                    if now - child.started_at > STABLE_AFTER:
                        child.backoff = MIN_BACKOFF
                    continue
                log.warning("%s (pid %d) exited with code %s; restarting in %.1fs",
                            child.name, proc.pid, proc.returncode, child.backoff)
                child.restart_at = now + child.backoff
                child.backoff = min(child.backoff * 2, MAX_BACKOFF)
            time.sleep(0.1)  # the supervisor's own poll of its children

    def stop(self) -> None:
        for role in ("gateway", "worker", "coordinator"):
            group = [c for c in self.children if c.role == role and c.proc is not None
                     and c.proc.poll() is None]
            for child in group:
                assert child.proc is not None
                child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for child in group:
                assert child.proc is not None
                try:
                    child.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in time; killing it", child.name)
                    child.proc.kill()
                    child.proc.wait()

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        try:
            urls = self.start()
        except ChildFailed as exc:
            log.error("%s", exc)
            self.stop()
            if self.own_keys:
                shutil.rmtree(self.own_keys, ignore_errors=True)
            return 1
        print(f"cluster: {self.config.handler} on {', '.join(urls)} "
              f"({self.config.gateways} gateways, {self.config.workers} workers)", flush=True)
        if self.discovery:
            print(f"cluster: Prometheus discovery on http://{self.discovery}/targets",
                  flush=True)
        if self.config.keys:
            print(f"cluster: CURVE keys in {self.config.keys} (publisher.key_secret for "
                  f"scripts{'; removed at exit' if self.own_keys else ''})", flush=True)
        try:
            self.watch()
        finally:
            log.info("stopping")
            self.stop()
            if self.own_keys:
                shutil.rmtree(self.own_keys, ignore_errors=True)
        return 0
