"""Shared state and membership on etcd, three hosts in network namespaces, faults.

Each host runs an etcd member, a gateway and a worker; the clients run in the root
namespace and talk to the gateways over the test bridge. While they increment a
counter and write unique keys, one host is killed (-9), cut off, or stopped; then
the invariants are checked: every acknowledged write is there, the counter lies
between the acknowledged increments and those plus the indeterminate ones, the
survivors served throughout, the replicas agree, the dead host's members left.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from cluster.plumbing.security import ROLE_KEYS, keygen
from tests.harness import solo_etcd, threads_running, wait_for
from tests.integration.test_cli import cluster_run, ports_of
from tests.integration.test_deploy import http
from tests.netns import Host, Hosts, start_etcd, three_hosts

pytestmark = pytest.mark.timeout(240)

APP = "tests.apps.fault_app:app"
COMMON = ["--heartbeat-interval", "0.5"]


@dataclass
class Site:
    host: Host
    url: str  # its gateway
    gateway_metrics: str
    worker_metrics: str


@dataclass
class Deployment:
    hosts: Hosts
    sites: list[Site]
    backend: str


@contextmanager
def deployment() -> Iterator[Deployment]:
    with three_hosts() as hosts:
        backend = start_etcd(hosts)
        keys = str(hosts.logs / "keys")
        keygen(keys, ROLE_KEYS)
        sites = []
        for host in hosts.hosts:
            a = host.address
            base = [sys.executable, "-m", "cluster"]
            shared = [*COMMON, "--state-backend", backend, "--keys", keys,
                      "--metrics-host", a]
            host.start("gateway", [*base, "gateway", *shared, "--host", a, "--port", "8000",
                                   "--dispatch-bind", f"tcp://{a}:7000",
                                   "--metrics-port", "9100"], logs=hosts.logs)
            host.start("worker", [*base, "worker", *shared, "--handler", APP,
                                  "--state-timeout", "3",
                                  "--metrics-port", "9101", "--advertise-host", a],
                       logs=hosts.logs)
            sites.append(Site(host, f"http://{a}:8000", f"http://{a}:9100",
                              f"http://{a}:9101"))
        for site in sites:
            try:
                wait_for(lambda site=site: _ready(site), 30,  # type: ignore[misc]
                         f"{site.host.name} ready")
            except AssertionError:
                raise AssertionError("\n".join(
                    f"--- {s.host.name} {label}\n{s.host.log(label)[-2000:]}"
                    for s in sites for label in ("gateway", "worker"))) from None
        yield Deployment(hosts, sites, backend)


def _ready(site: Site) -> bool:
    try:
        gw = http(f"{site.gateway_metrics}/ready", timeout=2)[0] == 200
        wk = http(f"{site.worker_metrics}/ready", timeout=2)[0] == 200
        # Every worker linked to every gateway: 3 on each gateway.
        workers = json.loads(http(f"{site.gateway_metrics}/ready", timeout=2)[1])
        return gw and wk and workers.get("workers") == 3
    except OSError:
        return False


@dataclass
class Load:
    """Clients incrementing one counter and writing unique keys through `sites`."""

    sites: list[Site]
    acked_incr: int = 0
    unknown_incr: int = 0
    acked_puts: list[str] = field(default_factory=list)
    failures: dict[str, list[str]] = field(default_factory=dict)  # site -> what failed
    served: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, site: Site, worker: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            ok = self._try(site, "incr", "POST", "/incr")
            with self.lock:
                if ok:
                    self.acked_incr += 1
                    self.served[site.host.name] = self.served.get(site.host.name, 0) + 1
                else:
                    self.unknown_incr += 1  # it may or may not have been applied
            key = f"u{worker}x{n}"
            if self._try(site, "put", "PUT", f"/kv/{key}", b"v"):
                with self.lock:
                    self.acked_puts.append(key)

    def _try(self, site: Site, what: str, method: str, path: str, body: bytes = b"") -> bool:
        """One request; a failure is recorded with its status or error."""
        try:
            status, _ = http(f"{site.url}{path}", method, body, timeout=5)
        except OSError as exc:
            status, why = 0, repr(exc)
        else:
            why = str(status)
        if status != 200:
            with self.lock:
                self.failures.setdefault(site.host.name, []).append(f"{what} {why}")
        return status == 200

    @contextmanager
    def running(self, per_site: int = 2) -> Iterator[Load]:
        with threads_running([(self.run, (site, i * 10 + j))
                              for i, site in enumerate(self.sites)
                              for j in range(per_site)], self.stop):
            yield self


def counter(site: Site) -> int:
    status, body = http(f"{site.url}/incr", "POST")
    assert status == 200, body
    return int(json.loads(body)["n"]) - 1  # the read itself added one


def sequence(site: Site) -> float:
    body = http(f"{site.worker_metrics}/metrics")[1].decode()
    found = re.search(r"^cluster_worker_state_sequence (\S+)$", body, re.M)
    return float(found.group(1)) if found else -1.0


def members(site: Site) -> set[str]:
    groups = json.loads(http(f"{site.gateway_metrics}/targets")[1])
    return {t for g in groups for t in g["targets"]}


def warnings(d: Deployment) -> str:
    """The warning lines of every gateway and worker, for a failure's message."""
    return "\n".join(line for site in d.sites for label in ("gateway", "worker")
                     for line in site.host.log(label).splitlines()
                     if " WARNING " in line or " ERROR " in line)[-4000:]


def check_invariants(load: Load, survivors: list[Site], extra_incr: int = 0) -> None:
    """Every acknowledged put is there; the counter is within its bounds; the
    surviving replicas agree."""
    try:
        wait_for(lambda: len({sequence(s) for s in survivors}) == 1, 15,
                 "the surviving replicas at one revision")
    except AssertionError:
        d_logs = "\n".join(s.host.log("worker")[-3000:] for s in survivors)
        raise AssertionError(f"replicas at {[sequence(s) for s in survivors]}\n{d_logs}") \
            from None
    keys = set(json.loads(http(f"{survivors[0].url}/kv-keys")[1]))
    missing = [k for k in load.acked_puts if k not in keys]
    assert not missing, f"{len(missing)} acknowledged puts lost: {missing[:5]}"
    value = counter(survivors[0])
    assert load.acked_incr + extra_incr <= value <= \
        load.acked_incr + load.unknown_incr + extra_incr, (value, load.acked_incr,
                                                           load.unknown_incr)


@pytest.mark.slow
def test_state_and_membership_on_etcd_across_three_hosts() -> None:
    """The plain case: writes on one host are read on the others; atomic increments
    from all three add up exactly; discovery lists every process from any gateway."""
    with deployment() as d:
        a, b, c = d.sites
        assert http(f"{a.url}/kv/greeting", "PUT", b"hello")[0] == 200
        wait_for(lambda: http(f"{c.url}/kv/greeting")[0] == 200, 5, "the write on c")
        load = Load(d.sites)
        with load.running():
            time.sleep(3)  # the load's duration: three seconds of contended writes
        assert not load.failures, (load.failures, warnings(d))
        check_invariants(load, d.sites)  # no failure: the counter is exact
        assert len(members(b)) == 6  # 3 gateways and 3 workers, from any gateway


class Listener:
    """A WebSocket client in a room: which worker serves it, what it received, how
    its connection ended."""

    def __init__(self, site: Site) -> None:
        self.ws = ws_connect(f"ws://{site.url.removeprefix('http://')}/room/r", legacy=True)
        self.ws.send("whoami")
        self.pid = int(self.ws.recv(5))
        self.received: list[str] = []
        self.close_code: int | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                self.received.append(str(self.ws.recv(30)))
        except ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd is not None else None
        except TimeoutError:
            pass


@pytest.mark.slow
def test_a_host_killed_loses_no_acknowledged_write() -> None:
    with deployment() as d:
        a, b, c = d.sites
        lost_worker = json.loads(http(f"{c.worker_metrics}/live")[1])["pid"]
        # WebSocket clients in one room on the surviving gateways; one of them, served
        # by a surviving worker, broadcasts throughout.
        listeners = [Listener(site) for site in (a, b) for _ in range(4)]
        sender = next(x for x in listeners if x.pid != lost_worker)
        listeners.remove(sender)
        sent: list[str] = []
        stop_sending = threading.Event()

        def send() -> None:
            while not stop_sending.is_set():
                sent.append(f"m{len(sent)}")
                sender.ws.send(sent[-1])
                time.sleep(0.02)  # the broadcast rate: 50 a second, through the kill

        sending = threading.Thread(target=send, daemon=True)
        load = Load([a, b])
        with load.running():
            sending.start()
            time.sleep(2)  # load and broadcasts under way before the fault
            before = dict(load.served)
            killed_at = time.monotonic()
            c.host.kill_all()  # its etcd member, gateway and worker, all at once
            time.sleep(5)  # the survivors under load after it: lease expiry, election
            stop_sending.set()
            sending.join(5)
        # The survivors served throughout: both kept answering after the kill.
        assert all(load.served.get(s.host.name, 0) > before.get(s.host.name, 0)
                   for s in (a, b)), (before, load.served)
        assert sum(len(f) for f in load.failures.values()) <= 8, load.failures
        check_invariants(load, [a, b])
        gone = {f"{c.host.address}:9100", f"{c.host.address}:9101"}
        wait_for(lambda: not members(a) & gone, 10, "the dead host's members to leave")
        # Lease TTL (2 s) plus an election, at most.
        assert time.monotonic() - killed_at < 15
        # WebSockets: those served by a surviving worker kept their connection and
        # got every broadcast, in order; those whose worker died were told 1012.
        wait_for(lambda: all(x.received[-1:] == sent[-1:] for x in listeners
                             if x.pid != lost_worker), 10, "the last broadcast everywhere")
        for listener in listeners:
            if listener.pid == lost_worker:
                assert listener.close_code == 1012, listener.close_code
            else:
                assert listener.close_code is None and listener.received == sent, \
                    (listener.close_code, len(listener.received), len(sent))
            listener.ws.close()
        sender.ws.close()


@pytest.mark.parametrize("fault", ["partition", "sigstop"])
@pytest.mark.slow
def test_a_host_cut_off_or_stopped_rejoins(fault: str) -> None:
    with deployment() as d:
        a, b, c = d.sites
        load = Load([b, c])
        with load.running():
            time.sleep(1.5)  # load under way before the fault
            if fault == "partition":
                a.host.cut()
            else:
                a.host.signal_all(signal.SIGSTOP)
            time.sleep(4)  # past a's leases (2 s) and an election: the others settled
            before = dict(load.served)
            time.sleep(2)  # the window in which b and c must serve while a is out
            assert all(load.served.get(s.host.name, 0) > before.get(s.host.name, 0)
                       for s in (b, c)), (before, load.served, load.failures,
                                           warnings(d))  # served while a is out
            if fault == "partition":
                a.host.heal()
            else:
                a.host.signal_all(signal.SIGCONT)
            time.sleep(3)  # load continues while a rejoins
        check_invariants(load, d.sites)  # a caught up: one revision everywhere
        wait_for(lambda: http(f"{a.url}/incr", "POST")[0] == 200, 15, "a serving again")
        wait_for(lambda: len(members(a)) == 6, 15, "everyone back in the membership")


def _feed(site: Site, query: str = "") -> ClientConnection:
    return ws_connect(f"ws://{site.url.removeprefix('http://')}/feed/news{query}",
                      legacy=True, open_timeout=5)


def _feed_during_a_fault(site: Site, query: str = "", timeout: float = 20) -> ClientConnection:
    """A connection opened while a host is out: one placed on a worker the gateway has
    not yet given up on is refused (502); the next goes elsewhere."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _feed(site, query)
        except (InvalidHandshake, OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # poll: until the gateway has dropped the dead worker


def _frames(ws: ClientConnection, until: Callable[[list[dict[str, Any]]], bool],
            timeout: float = 20) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not until(got):
        text = ws.recv(max(0.05, deadline - time.monotonic()))
        if text != "!":  # the answer to "?", not a frame
            got.append(json.loads(text))
    return got


@pytest.mark.slow
def test_history_on_etcd_survives_a_host_killed_mid_publish() -> None:
    """Publishes numbered by etcd: a client leaves one host's gateway, a host is killed
    (-9: its etcd member, the one every process used first, its gateway and worker)
    while a room talks, and the client rejoining through a third host gets the exact
    sequence it missed, then the live messages: no gap, nothing twice."""
    with deployment() as d:
        a, b, c = d.sites
        sent: list[str] = []
        stop = threading.Event()

        def keep_talking() -> None:
            """Through c; a connection whose worker was on the killed host is closed
            (1012): the talker connects again and goes on."""
            i = 0
            while not stop.is_set():
                try:
                    with _feed(c, "?talk_only=1") as talker:
                        while not stop.is_set():
                            talker.send(f"k{i}")
                            sent.append(f"k{i}")
                            i += 1
                            time.sleep(0.01)  # the publish rate: the kill falls among them
                except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
                    stop.wait(0.05)  # a refused connect during the fault: again

        reader = _feed(b)
        reader.send("?")
        assert reader.recv(10) == "!"  # subscribed
        thread = threading.Thread(target=keep_talking, daemon=True)
        thread.start()
        try:
            _killed_mid_publish(a, b, c, reader, stop, thread)
        finally:
            stop.set()
            thread.join(15)


def _killed_mid_publish(a: Site, b: Site, c: Site, reader: ClientConnection,
                        stop: threading.Event, thread: threading.Thread) -> None:
    seen = _frames(reader, lambda got: len(got) == 20)
    epoch, offset = seen[-1]["epoch"], seen[-1]["offset"]
    assert [f["offset"] for f in seen] == list(range(seen[0]["offset"], offset + 1))
    reader.close()
    a.host.kill_all()  # mid-publish
    # Publishing goes on through the survivors: b sees the offsets grow.
    witness = _feed_during_a_fault(b)
    witness.send("?")  # its answer may come among the first published frames
    _frames(witness, lambda got: bool(got) and got[-1].get("offset", 0) > offset + 100,
            timeout=40)
    stop.set()
    thread.join(15)
    with _feed_during_a_fault(c, "?talk_only=1") as talker:
        talker.send("end")
    back = _feed_during_a_fault(c, f"?since={epoch}:{offset}")  # through another host
    got = _frames(back, lambda got: bool(got) and got[-1].get("data") == "end")
    assert got[0] == {"group": "news", "epoch": epoch, "recovered": True}, got[:3]
    offsets = [f["offset"] for f in got[1:]]
    assert offsets == list(range(offset + 1, offset + 1 + len(offsets)))  # no gap
    data = [f["data"] for f in got[1:-1]]
    assert len(set(data)) == len(data)  # none twice
    assert data == sorted(data, key=lambda x: int(x[1:]))  # in the order sent
    assert int(data[0][1:]) > int(seen[-1]["data"][1:])
    back.close()
    witness.close()


def test_cluster_run_on_etcd_has_no_coordinator(tmp_path: Path) -> None:
    """One machine, one etcd member on loopback: `cluster run --state-backend` starts
    gateways and workers only, and their state and discovery work."""
    with solo_etcd(tmp_path / "etcd") as url, \
            cluster_run("--state-backend", f"{url}/solo", handler=APP) as run:
        port = ports_of(run.banner)[0]
        assert "started coordinator" not in run.log()
        assert [http(f"http://127.0.0.1:{port}/incr", "POST")[1] for _ in range(3)] == \
            [b'{"n":1}', b'{"n":2}', b'{"n":3}']
        discovery = re.search(r"discovery on (http://\S+)", run.banner)
        assert discovery is not None, run.banner
        targets = discovery.group(1)
        wait_for(lambda: sorted(g["labels"]["role"] for g in json.loads(
            http(targets)[1])) == ["gateway", "worker", "worker"], 10,
            "every process in discovery")
