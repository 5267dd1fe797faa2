"""Chaos run: mixed traffic on three hosts (network namespaces, as root) while faults
strike random hosts; then a checker says whether anything promised was lost.

    .venv/bin/python -m loadtests.chaos [--seconds 120] [--runs 3] [--seed N]

Each host runs an etcd member, a gateway and a worker (tests/apps/fault_app.py).
From the root namespace, at once:
- HTTP: clients increment one counter and write unique keys through random hosts;
- rooms: a client on each host in one WebSocket room, each sending numbered
  messages that the others receive by broadcast;
- history: a talker publishes numbered messages to a group; readers keep leaving
  and coming back through a random host with the (epoch, offset) they last saw.
Every few seconds one host (never two at once: etcd keeps its quorum) is killed
(-9, then started again with the same data), stopped (SIGSTOP, then SIGCONT), or cut
off (its link down, then up), for a few seconds.

The checker, once every host is back:
- every acknowledged write is there, and the counter lies between the acknowledged
  increments and those plus the unanswered ones;
- every reader got, across all its reconnections, each offset exactly once and in
  order whenever it was told `recovered: true` (and a plain `recovered: false`
  otherwise); no room client got a sender's messages twice or out of order;
- every HTTP request got an answer: 200, or during a fault (and a grace period
  after it) 502, 503 or 504, or no connection to the host at fault;
- the memory of processes that ran throughout is flat (end against warm-up).

It prints a summary table and keeps it, with the details, under reports/.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect as ws_connect

from cluster.plumbing.security import ROLE_KEYS, keygen
from tests.harness import ROOT, wait_for
from tests.integration.test_deploy import http
from tests.netns import Host, Hosts, etcd_argv, start_etcd, three_hosts

APP = "tests.apps.fault_app:app"
GRACE = 10.0  # seconds after a fault ends during which its effects may still show
ANSWERS_IN_FAULT = {200, 502, 503, 504}


@dataclass
class Site:
    host: Host
    argv: dict[str, list[str]]  # role -> how to start it again
    starts: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host.address}:8000"

    @property
    def ws(self) -> str:
        return f"ws://{self.host.address}:8000"


@dataclass
class Fault:
    kind: str
    host: str
    began: float
    ended: float = 0.0


@dataclass
class Record:
    """What every thread saw, under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: list[Fault] = field(default_factory=list)
    # when, host, status (0: none), the error if none
    requests: list[tuple[float, str, int, str]] = field(default_factory=list)
    acked_incr: int = 0
    unknown_incr: int = 0
    acked_puts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def in_fault(self, at: float, host: str | None = None) -> bool:
        with self.lock:
            return any(f.began - 1.0 <= at <= (f.ended or float("inf")) + GRACE and
                       (host is None or f.host == host) for f in self.faults)


class Deployment:
    def __init__(self, hosts: Hosts) -> None:
        self.hosts = hosts
        backend = start_etcd(hosts)
        keys = str(hosts.logs / "keys")
        keygen(keys, ROLE_KEYS)
        self.sites: list[Site] = []
        for host in hosts.hosts:
            a = host.address
            shared = [sys.executable, "-m", "cluster"]
            common = ["--heartbeat-interval", "0.5", "--state-backend", backend, "--keys", keys,
                      "--metrics-host", a]
            argv = {
                "etcd": etcd_argv(hosts, host),
                "gateway": [*shared, "gateway", *common, "--host", a, "--port", "8000",
                            "--dispatch-bind", f"tcp://{a}:7000", "--metrics-port", "9100"],
                "worker": [*shared, "worker", *common, "--handler", APP, "--state-timeout", "3",
                           "--metrics-port", "9101", "--advertise-host", a],
            }
            site = Site(host, argv)
            for role in ("gateway", "worker"):
                self.start(site, role)
            self.sites.append(site)
        for site in self.sites:
            wait_for(lambda site=site: self.ready(site), 60,  # type: ignore[misc]
                     f"{site.host.name} ready")

    def start(self, site: Site, role: str) -> None:
        n = site.starts.get(role, 0) + 1
        site.starts[role] = n
        label = role if n == 1 else f"{role}-{n}"
        site.host.start(label, site.argv[role], logs=self.hosts.logs)

    def ready(self, site: Site) -> bool:
        try:
            body = http(f"http://{site.host.address}:9100/ready", timeout=2)
            return body[0] == 200 and json.loads(body[1]).get("workers", 0) >= 1
        except (OSError, ValueError):
            return False

    def restart_killed(self, site: Site) -> None:
        for role in ("etcd", "gateway", "worker"):
            self.start(site, role)


def rss_of(site: Site, port: int) -> tuple[int, float]:
    """(pid, resident MiB) of the process serving metrics on `port` of the host."""
    body = json.loads(http(f"http://{site.host.address}:{port}/live", timeout=3)[1])
    pid = int(body["pid"])
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return pid, int(line.split()[1]) / 1024
    return pid, 0.0


# -- traffic -------------------------------------------------------------------------

def http_client(d: Deployment, rec: Record, stop: threading.Event, worker: int,
                rng: random.Random) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        site = rng.choice(d.sites)
        for kind, method, path in (("incr", "POST", "/incr"),
                                   ("put", "PUT", f"/kv/c{worker}x{n}")):
            at = time.monotonic()
            try:
                status, _ = http(f"{site.url}{path}", method, b"v", timeout=8)
                error = ""
            except OSError as exc:
                status, error = 0, type(exc).__name__
            with rec.lock:
                rec.requests.append((at, site.host.name, status, error))
                if kind == "incr":
                    if status == 200:
                        rec.acked_incr += 1
                    else:
                        rec.unknown_incr += 1
                elif status == 200:
                    rec.acked_puts.append(path.rsplit("/", 1)[1])


def room_member(d: Deployment, rec: Record, stop: threading.Event, index: int) -> None:
    """On its own host's gateway: sends `r{index}.{connection}:{n}`, checks that what
    each of the others' connections sends arrives once and in order (the promise is
    per sending connection: one that ended may still have messages on their way)."""
    site = d.sites[index]
    n = connection = 0
    while not stop.is_set():
        connection += 1
        try:
            with ws_connect(f"{site.ws}/room/chaos", open_timeout=5) as ws:
                last: dict[str, int] = {}
                while not stop.is_set():
                    n += 1
                    ws.send(f"r{index}.{connection}:{n}")
                    deadline = time.monotonic() + 0.2
                    while (left := deadline - time.monotonic()) > 0:
                        try:
                            text = str(ws.recv(left))
                        except TimeoutError:
                            break
                        sender, _, count = text.partition(":")
                        if not count.isdigit():
                            continue
                        if int(count) <= last.get(sender, 0):
                            rec.problem(f"room member {index}: {text} after "
                                        f"{sender}:{last[sender]}")
                        last[sender] = int(count)
        except (ConnectionClosed, OSError, InvalidHandshake, TimeoutError):
            stop.wait(0.3)


@dataclass
class Reader:
    """A history reader's view across its reconnections."""

    index: int
    epoch: str = ""
    offset: int = -1  # -1: nothing seen yet
    frames: int = 0
    recovered: int = 0
    unrecoverable: int = 0


def publisher(d: Deployment, rec: Record, stop: threading.Event, rng: random.Random) -> None:
    n = 0
    while not stop.is_set():
        site = rng.choice(d.sites)
        try:
            with ws_connect(f"{site.ws}/feed/news?talk_only=1", open_timeout=5) as ws:
                while not stop.is_set():
                    n += 1
                    ws.send(f"k{n}")
                    stop.wait(0.02)  # 50 publishes a second
        except (ConnectionClosed, OSError, InvalidHandshake, TimeoutError):
            stop.wait(0.3)


def history_reader(d: Deployment, rec: Record, stop: threading.Event, reader: Reader,
                   rng: random.Random) -> None:
    while not stop.is_set():
        site = rng.choice(d.sites)
        query = f"?since={reader.epoch}:{reader.offset}" if reader.offset >= 0 else ""
        try:
            with ws_connect(f"{site.ws}/feed/news{query}", open_timeout=5) as ws:
                leave_at = time.monotonic() + rng.uniform(0.5, 3.0)
                expect_marker = bool(query)
                while not stop.is_set() and time.monotonic() < leave_at:
                    try:
                        frame = json.loads(ws.recv(max(0.05, leave_at - time.monotonic())))
                    except TimeoutError:
                        break
                    check_frame(rec, reader, frame, expect_marker)
                    expect_marker = False
        except (ConnectionClosed, OSError, InvalidHandshake, InvalidStatus, TimeoutError):
            pass
        stop.wait(rng.uniform(0.2, 1.5))  # away: messages are published meanwhile


def check_frame(rec: Record, reader: Reader, frame: dict[str, Any], expect_marker: bool
                ) -> None:
    if "recovered" in frame:
        if frame["recovered"]:
            reader.recovered += 1
            if frame["epoch"] != reader.epoch:
                rec.problem(f"reader {reader.index}: recovered under epoch {frame['epoch']} "
                            f"after {reader.epoch}")
        else:
            reader.unrecoverable += 1
            reader.offset = -1  # a plain "not recoverable": start afresh
        return
    if expect_marker:
        rec.problem(f"reader {reader.index}: a message before the recovery's answer")
    epoch, offset = frame["epoch"], frame["offset"]
    reader.frames += 1
    if reader.offset >= 0 and epoch == reader.epoch and offset != reader.offset + 1:
        rec.problem(f"reader {reader.index}: offset {offset} after {reader.offset} "
                    f"({'a repeat' if offset <= reader.offset else 'a gap'})")
    reader.epoch, reader.offset = epoch, offset


# -- faults ----------------------------------------------------------------------------

def faults(d: Deployment, rec: Record, stop: threading.Event, rng: random.Random,
           every: float) -> None:
    while not stop.wait(rng.uniform(every / 2, every)):
        site = rng.choice(d.sites)
        kind = rng.choice(["kill", "stop", "cut"])
        fault = Fault(kind, site.host.name, time.monotonic())
        with rec.lock:
            rec.faults.append(fault)
        if kind == "kill":
            site.host.kill_all()
        elif kind == "stop":
            site.host.signal_all(signal.SIGSTOP)
        else:
            site.host.cut()
        stop.wait(rng.uniform(2.0, 5.0))  # out for this long
        if kind == "kill":
            d.restart_killed(site)
        elif kind == "stop":
            site.host.signal_all(signal.SIGCONT)
        else:
            site.host.heal()
        try:
            wait_for(lambda site=site: d.ready(site), 60,  # type: ignore[misc]
                     f"{site.host.name} back")
        except AssertionError as exc:
            rec.problem(str(exc))
        fault.ended = time.monotonic()


# -- the run -----------------------------------------------------------------------------

def run(seconds: float, seed: int, every: float) -> tuple[bool, str]:
    rng = random.Random(seed)
    rec = Record()
    with three_hosts() as hosts:
        d = Deployment(hosts)
        stop, stop_faults = threading.Event(), threading.Event()
        readers = [Reader(i) for i in range(3)]
        threads = [threading.Thread(target=http_client, args=(d, rec, stop, i,
                                                              random.Random(seed + i)))
                   for i in range(4)]
        threads += [threading.Thread(target=room_member, args=(d, rec, stop, i))
                    for i in range(3)]
        threads.append(threading.Thread(target=publisher,
                                        args=(d, rec, stop, random.Random(seed + 10))))
        threads += [threading.Thread(target=history_reader,
                                     args=(d, rec, stop, r, random.Random(seed + 20 + r.index)))
                    for r in readers]
        for thread in threads:
            thread.daemon = True
            thread.start()
        stop.wait(3)  # warm-up, then memory is taken
        memory_before = {(s.host.name, port): rss_of(s, port) for s in d.sites
                         for port in (9100, 9101)}
        chaos = threading.Thread(target=faults, args=(d, rec, stop_faults, rng, every),
                                 daemon=True)
        chaos.start()
        stop_faults.wait(seconds)
        stop_faults.set()
        chaos.join(90)
        stop.wait(3)  # traffic once more with everyone back
        stop.set()
        for thread in threads:
            thread.join(15)
        report = check(d, rec, readers, memory_before, seconds, seed)
    ok = not rec.problems
    return ok, report


def check(d: Deployment, rec: Record, readers: list[Reader],
          memory_before: dict[tuple[str, int], tuple[int, float]], seconds: float,
          seed: int) -> str:
    first = d.sites[0]
    # Writes: every acknowledged put, the counter within its bounds.
    keys = set(json.loads(http(f"{first.url}/kv-keys", timeout=10)[1]))
    lost = [k for k in rec.acked_puts if k not in keys]
    if lost:
        rec.problem(f"{len(lost)} acknowledged puts lost: {lost[:5]}")
    status, body = http(f"{first.url}/incr", "POST", timeout=10)
    counter = int(json.loads(body)["n"]) - 1 if status == 200 else -1
    if not rec.acked_incr <= counter <= rec.acked_incr + rec.unknown_incr:
        rec.problem(f"counter {counter} outside [{rec.acked_incr}, "
                    f"{rec.acked_incr + rec.unknown_incr}]")
    # Answers: outside faults, 200 only.
    outside: dict[str, int] = {}
    during: dict[str, int] = {}
    for at, host, status, error in rec.requests:
        what = str(status) if status else error
        if rec.in_fault(at):
            during[what] = during.get(what, 0) + 1
            if status and status not in ANSWERS_IN_FAULT:
                rec.problem(f"HTTP {status} during a fault, from {host}")
            if not status and not rec.in_fault(at, host):
                rec.problem(f"no answer ({error}) from {host}, which was not at fault")
        else:
            outside[what] = outside.get(what, 0) + 1
            if status != 200:
                rec.problem(f"HTTP {what} from {host} with no fault under way")
    # Memory of the processes that ran throughout.
    memory_rows = []
    for (host, port), (pid, before) in sorted(memory_before.items()):
        site = next(s for s in d.sites if s.host.name == host)
        try:
            now_pid, after = rss_of(site, port)
        except (OSError, ValueError):
            continue
        if now_pid != pid:
            continue  # restarted by a kill: not comparable
        role = "gateway" if port == 9100 else "worker"
        memory_rows.append(f"| {host} {role} | {before:.0f} | {after:.0f} |")
        if after > before * 1.5 + 20:
            rec.problem(f"{host} {role}: resident memory {before:.0f} -> {after:.0f} MiB")
    fault_counts: dict[str, int] = {}
    for fault in rec.faults:
        fault_counts[fault.kind] = fault_counts.get(fault.kind, 0) + 1
    lines = [
        f"# Chaos run: {seconds:.0f} s of faults, seed {seed}",
        "",
        "| what | value |",
        "|---|---:|",
        f"| faults (kill / stop / cut) | {fault_counts.get('kill', 0)} / "
        f"{fault_counts.get('stop', 0)} / {fault_counts.get('cut', 0)} |",
        f"| HTTP requests | {len(rec.requests)} |",
        f"| answers outside faults | {json.dumps(outside, sort_keys=True)} |",
        f"| answers during faults | {json.dumps(during, sort_keys=True)} |",
        f"| increments acknowledged / unanswered / counter | {rec.acked_incr} / "
        f"{rec.unknown_incr} / {counter} |",
        f"| puts acknowledged / lost | {len(rec.acked_puts)} / {len(lost)} |",
        f"| history frames read (3 readers) | {sum(r.frames for r in readers)} |",
        f"| reconnections recovered / told not recoverable | "
        f"{sum(r.recovered for r in readers)} / {sum(r.unrecoverable for r in readers)} |",
        f"| problems | {len(rec.problems)} |",
        "",
        "| process (ran throughout) | RSS after warm-up MiB | at the end MiB |",
        "|---|---:|---:|",
        *memory_rows,
        "",
        "Faults:",
        *(f"- {f.kind} {f.host} for {f.ended - f.began:.1f} s" for f in rec.faults),
    ]
    if rec.problems:
        lines += ["", "Problems:", *(f"- {p}" for p in rec.problems[:50])]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--runs", type=int, default=3, help="in a row; stops at the first "
                        "that fails")
    parser.add_argument("--every", type=float, default=10, help="seconds between faults, "
                        "about")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    reports = ROOT / "reports"
    reports.mkdir(exist_ok=True)
    for n in range(args.runs):
        seed = args.seed + n
        ok, report = run(args.seconds, seed, args.every)
        path = reports / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}.md"
        path.write_text(report + "\n")
        print(report)
        print(f"\nrun {n + 1} of {args.runs}: {'passed' if ok else 'FAILED'} ({path})\n")
        if not ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
