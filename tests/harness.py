"""Real processes for the tests: start a role, wait for its ready line, stop it.

Every process is the real command (`python -m cluster ROLE`) on ephemeral ports on
127.0.0.1; every wait has a deadline; every process started is stopped by its pid.
Every cluster has CURVE keys of its own (a pair per role and one for the tests'
probes), as a deployment would.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cluster.errors import ChildFailed
from cluster.plumbing.child import read_ready
from cluster.plumbing.security import ROLE_KEYS, Curve, keygen

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--heartbeat-interval", "0.25"]
_log_dir: Path | None = None


def log_file(prefix: str) -> tuple[int, str]:
    """A new file for a process's stderr, read by the test while it runs (and shown
    when one fails): in one directory, made at the first call and removed when this
    process exits, so a run leaves nothing behind in /tmp."""
    global _log_dir
    if _log_dir is None:
        _log_dir = Path(tempfile.mkdtemp(prefix="cluster-test-logs-"))
        atexit.register(shutil.rmtree, _log_dir, True)
    return tempfile.mkstemp(prefix=prefix, suffix=".log", dir=_log_dir)


class Proc:
    def __init__(self, role: str, argv: list[str], env: dict[str, str] | None,
                 wait_ready: bool, timeout: float) -> None:
        self.role = role
        log_fd, log_name = log_file(f"{role}-")
        self.log_path = Path(log_name)
        read_fd, write_fd = os.pipe()
        full_env = {**os.environ, **(env or {})}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "cluster", role, *argv, "--ready-fd", str(write_fd)],
            pass_fds=(write_fd,), cwd=ROOT, env=full_env,
            stdout=subprocess.DEVNULL, stderr=log_fd)
        os.close(write_fd)
        os.close(log_fd)  # the child has its own copy
        self.ready: dict[str, Any] = {}
        try:
            if wait_ready:
                self.ready = read_ready(read_fd, self.popen, timeout, role)
        except ChildFailed as exc:
            self.popen.kill()
            self.popen.wait(10)
            raise AssertionError(f"{exc}; log:\n{self.log()}") from None
        finally:
            os.close(read_fd)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        return wait_for(lambda: text in self.log(), timeout, f"{text!r} in {self.role} log") \
            and self.log()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS), for tests that bound it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` until it is truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # poll


async def wait_until(check: Callable[[], Awaitable[Any]], timeout: float, what: str,
                     every: float = 0.05) -> Any:
    """`wait_for` for async checks (one that asks a server, say): the same deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)  # poll


class Cluster:
    """A coordinator, gateways and workers started one by one, stopped together. With
    a `backend` (etcd://...), no coordinator: every process uses etcd."""

    def __init__(self, interval: list[str] | None = None, backend: str = "") -> None:
        self.procs: list[Proc] = []
        self.interval = FAST if interval is None else interval
        self.backend = backend
        self.keys = tempfile.mkdtemp(prefix="cluster-test-keys-")
        keygen(self.keys, (*ROLE_KEYS, "probe"))
        self.endpoint = ""
        if not backend:
            self.coordinator = self.start("coordinator", "--coordinator-bind",
                                          "tcp://127.0.0.1:0")
            self.endpoint = self.coordinator.ready["endpoint"]

    def start(self, role: str, *argv: str, env: dict[str, str] | None = None,
              wait_ready: bool = True, timeout: float = 15.0) -> Proc:
        args = list(argv) + self.interval
        if self.backend:
            args += ["--state-backend", self.backend]
        elif role != "coordinator":
            args += ["--coordinator", self.endpoint]
        proc = Proc(role, args, {"CLUSTER_KEYS": self.keys, **(env or {})}, wait_ready,
                    timeout)
        self.procs.append(proc)
        return proc

    def gateway(self, *argv: str, **kw: Any) -> Proc:
        return self.start("gateway", "--port", "0", *argv, **kw)

    def worker(self, handler: str, *argv: str, **kw: Any) -> Proc:
        return self.start("worker", "--handler", handler, *argv, **kw)

    def probe(self, role: str = "probe", info: dict[str, Any] | None = None) -> Probe:
        """A raw member of this cluster, with the probe key every member allows."""
        return Probe(self.endpoint, self.curve(), role, info)

    def public_key(self, name: str) -> bytes:
        """The public key of a pair in this cluster's keys (a role's: "gateway", ...)."""
        import zmq.auth
        public, _ = zmq.auth.load_certificate(Path(self.keys) / f"{name}.key")
        return public

    def curve(self) -> Curve:
        """The tests' own allowed key pair, for raw sockets speaking to the cluster."""
        return Curve(self.keys, "probe")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.keys, ignore_errors=True)


@contextmanager
def cluster(interval: list[str] | None = None, backend: str = "") -> Iterator[Cluster]:
    c = Cluster(interval, backend)
    try:
        yield c
    finally:
        c.stop()


@contextmanager
def threads_running(calls: list[tuple[Callable[..., None], tuple[Any, ...]]],
                    stop: threading.Event) -> Iterator[None]:
    """Client threads, each `fn(*args)` looping until `stop`; set and joined at the end."""
    threads = [threading.Thread(target=fn, args=args, daemon=True) for fn, args in calls]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)


@contextmanager
def solo_etcd(data_dir: Path) -> Iterator[str]:
    """One etcd member on loopback, on free ports: its `etcd://127.0.0.1:PORT`."""
    import socket

    import pytest
    etcd = shutil.which("etcd")
    if etcd is None:
        pytest.skip("etcd is not installed (make test installs etcd-server)")
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
    client, peer = ports
    member = subprocess.Popen(
        [etcd, "--name", "solo", "--data-dir", str(data_dir),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"solo=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(
            ["etcdctl", "--endpoints", f"127.0.0.1:{client}", "endpoint", "health"],
            capture_output=True, timeout=10, env={**os.environ, "ETCDCTL_API": "3"}
        ).returncode == 0, 30, "etcd healthy")
        yield f"etcd://127.0.0.1:{client}"
    finally:
        member.terminate()
        member.wait(20)


class Probe:
    """A raw ZeroMQ member of the cluster, for watching or faking membership."""

    def __init__(self, endpoint: str, curve: Curve, role: str = "probe",
                 info: dict[str, Any] | None = None) -> None:
        import zmq

        from cluster.plumbing import wire
        self.wire = wire
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        curve.coordinator_client(self.sock)
        self.sock.connect(endpoint)
        self.id = f"probe-{os.getpid()}-{id(self)}"
        self.members: list[dict[str, Any]] = []
        self.sock.send(wire.encode_one(wire.REGISTER, id=self.id, role=role, info=info or {}))

    def poll(self, seconds: float) -> None:
        """Receive membership updates (and heartbeat) for up to `seconds`."""
        deadline = time.monotonic() + seconds
        self.sock.send(self.wire.encode_one(self.wire.HEARTBEAT, id=self.id))
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            for msg in self.wire.decode_frame(self.sock.recv()):
                if msg["k"] == self.wire.MEMBERS:
                    self.members = msg["members"]
                elif msg["k"] == self.wire.HEARTBEAT and msg.get("seq") is not None:
                    self.sock.send(self.wire.encode_one(self.wire.SYNC, id=self.id))
                elif msg["k"] == self.wire.WHO:
                    self.sock.send(self.wire.encode_one(self.wire.REGISTER, id=self.id,
                                                        role="probe", info={}))
            break

    def wait_members(self, predicate: Callable[[list[dict[str, Any]]], bool],
                     timeout: float, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while not predicate(self.members):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"members: {self.members}")
            self.poll(0.1)
        return self.members

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()
