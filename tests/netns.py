"""Three hosts on one machine: Linux network namespaces on a bridge, made and removed
by the tests (as root).

Each host is a namespace with its own network stack and one address on a test
subnet, 10.213.X.1-3/24, reached from the root namespace (the clients' side)
through a bridge holding 10.213.X.254. A host's processes run under `ip netns
exec`; nothing in the product knows it. A host can be cut off (its link set down)
and healed, or have every process killed or stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import ROOT, wait_for

SUBNET_BASE = "10.213"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=10)


class Host:
    def __init__(self, name: str, namespace: str, address: str, link: str) -> None:
        self.name = name
        self.namespace = namespace
        self.address = address
        self.link = link  # the bridge's end of its cable
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, label: str, argv: list[str], env: dict[str, str] | None = None,
              logs: Path | None = None) -> subprocess.Popen[bytes]:
        log = (logs or Path(tempfile.gettempdir())) / f"{self.name}-{label}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(["ip", "netns", "exec", self.namespace, *argv],
                                     stdout=out, stderr=out, env={**os.environ, **(env or {})},
                                     cwd=ROOT, start_new_session=True)
        self.procs.append((label, popen, log))
        return popen

    def log(self, label: str) -> str:
        for name, _popen, path in self.procs:
            if name == label:
                return path.read_text(errors="replace")
        return ""

    def signal_all(self, sig: int) -> None:
        """Every process of this host (each runs in a session of its own)."""
        for _label, popen, _path in self.procs:
            if popen.poll() is None:
                os.killpg(popen.pid, sig)

    def kill_all(self) -> None:
        self.signal_all(signal.SIGKILL)
        for _label, popen, _path in self.procs:
            popen.wait(10)

    def stop_all(self) -> None:
        """SIGTERM, then SIGKILL for what is still there after 15 s."""
        self.signal_all(signal.SIGCONT)
        self.signal_all(signal.SIGTERM)
        for _label, popen, _path in self.procs:
            try:
                popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(10)

    def cut(self) -> None:
        _ip("link", "set", self.link, "down")

    def heal(self) -> None:
        _ip("link", "set", self.link, "up")


class Hosts:
    def __init__(self, count: int) -> None:
        tag = os.urandom(2).hex()
        self.bridge = f"clbr{tag}"
        self.subnet = f"{SUBNET_BASE}.{int(tag, 16) % 250 + 1}"
        self.hosts: list[Host] = []
        self.logs = Path(tempfile.mkdtemp(prefix="cluster-hosts-"))
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(1, count + 1):
                namespace, outside, inside = f"cl{tag}h{i}", f"cl{tag}p{i}", f"cl{tag}i{i}"
                _ip("netns", "add", namespace)
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", namespace)
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                address = f"{self.subnet}.{i}"
                for args in (("addr", "add", f"{address}/24", "dev", inside),
                             ("link", "set", inside, "up"), ("link", "set", "lo", "up")):
                    _ip("-n", namespace, *args)
                self.hosts.append(Host(f"h{i}", namespace, address, outside))
        except (subprocess.CalledProcessError, OSError):
            self.close()
            raise

    def close(self) -> None:
        for host in self.hosts:
            host.stop_all()
        for host in self.hosts:
            _ip("netns", "del", host.namespace, check=False)  # takes its veth along
            _ip("link", "del", host.link, check=False)
        _ip("link", "del", self.bridge, check=False)
        shutil.rmtree(self.logs, ignore_errors=True)


@contextmanager
def three_hosts() -> Iterator[Hosts]:
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need root and iproute2")
    probe = _ip("netns", "add", f"clprobe{os.getpid()}", check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make network namespaces here: {probe.stderr.strip()}")
    _ip("netns", "del", f"clprobe{os.getpid()}", check=False)
    hosts = Hosts(3)
    try:
        yield hosts
    finally:
        hosts.close()


def etcd_argv(hosts: Hosts, host: Host) -> list[str]:
    """The etcd member of `host`, one of a cluster on every host (run again after a
    kill: its data directory is kept)."""
    etcd = shutil.which("etcd")
    if etcd is None:
        pytest.skip("etcd is not installed (make test installs etcd-server)")
    peers = ",".join(f"{h.name}=http://{h.address}:2380" for h in hosts.hosts)
    return [etcd, "--name", host.name, "--data-dir", str(hosts.logs / f"etcd-{host.name}"),
            "--listen-client-urls", f"http://{host.address}:2379",
            "--advertise-client-urls", f"http://{host.address}:2379",
            "--listen-peer-urls", f"http://{host.address}:2380",
            "--initial-advertise-peer-urls", f"http://{host.address}:2380",
            "--initial-cluster", peers, "--initial-cluster-state", "new",
            "--initial-cluster-token", hosts.bridge,
            "--heartbeat-interval", "100", "--election-timeout", "1000",
            # A member back from a partition must not depose the leader.
            "--pre-vote"]


def start_etcd(hosts: Hosts) -> str:
    """An etcd member on every host, one cluster; the --state-backend URL."""
    for host in hosts.hosts:
        host.start("etcd", etcd_argv(hosts, host), logs=hosts.logs)
    endpoints = ",".join(f"{h.address}:2379" for h in hosts.hosts)

    def healthy() -> bool:
        done = subprocess.run(["etcdctl", "--endpoints", endpoints, "endpoint", "health"],
                              capture_output=True, text=True, timeout=10,
                              env={**os.environ, "ETCDCTL_API": "3"})
        return done.returncode == 0
    wait_for(healthy, 30, "the etcd cluster to be healthy")
    return f"etcd://{endpoints}/test"
