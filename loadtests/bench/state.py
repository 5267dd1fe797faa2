"""Shared-state benchmark: atomic increments through the coordinator vs Redis INCR
vs etcd (three members, as `--state-backend etcd://...` uses it), in one run, with
the same number of Python client processes; and how long an update takes to reach a
replica.

    .venv/bin/python -m loadtests.bench.state [--clients 8] [--seconds 5]

Each client sends one INCR and waits for its answer before the next (no pipelining),
on every side. The coordinator runs with --fsync batch and --fsync always; Redis
(Debian's redis-server) with appendonly and appendfsync everysec and always; etcd
(Debian's etcd-server, 3 members on 127.0.0.1, fsync on every commit as always)
through the worker's own etcd state client (`cluster.etcd.state.EtcdState`: a
replica per client process, each INCR a compare-and-set transaction).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from cluster.plumbing import wire
from cluster.plumbing.security import Curve
from loadtests.bench.servers import ROOT, bench_keys, free_port

PY = sys.executable


def ensure_redis() -> str:
    found = shutil.which("redis-server")
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing redis-server with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True)
        found = shutil.which("redis-server")
    if not found:
        sys.exit("redis-server is needed: apt-get install redis-server")
    return found


# -- clients (each in its own process) ------------------------------------------------

def member(keys: str) -> Curve:
    """A client of the coordinator with a member's key (the bench's worker pair)."""
    return Curve(keys, "worker")


def cluster_client(target: tuple[str, str], seconds: float, out: Any) -> None:
    """target: the coordinator's endpoint and the key directory (a spawned process
    gets it passed: it has none of its parent's state)."""
    endpoint, keys = target
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    member(keys).coordinator_client(sock)
    sock.connect(endpoint)
    me = f"bench-{os.getpid()}"
    count, rid = 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rid += 1
        sock.send(wire.encode_one(wire.STATE_OP, id=me, rid=rid, ops=[["incr", "n", 1]]))
        while True:
            [msg] = wire.decode_frame(sock.recv())
            if msg["k"] == wire.STATE_ACK and msg["rid"] == rid:
                break
        count += 1
    out.put(count)
    sock.close()
    ctx.term()


def redis_client(port: int, seconds: float, out: Any) -> None:
    import redis
    r = redis.Redis(port=port)
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r.incr("n")
        count += 1
    out.put(count)


def etcd_client(target: tuple[str, bool, int], seconds: float, out: Any) -> None:
    """A worker's etcd state client, incrementing one key (as `state.incr` does): the
    key all clients share, or one of its own (`own_key`); `inflight` at a time (as a
    worker's concurrent requests do)."""
    url, own_key, inflight = target
    key = f"n{os.getpid()}" if own_key else "n"
    import asyncio

    import uvloop

    from cluster.etcd.state import EtcdState
    from cluster.plumbing.config import WorkerConfig

    async def run() -> int:
        state = EtcdState(asyncio.get_running_loop(),
                          WorkerConfig(handler="bench:none", state_backend=url), {})
        state.start()
        await asyncio.wait_for(state.synced.wait(), 20)
        deadline = time.monotonic() + seconds

        async def one() -> int:
            count = 0
            while time.monotonic() < deadline:
                await state.acall([["incr", key, 1]])
                count += 1
            return count

        counts = await asyncio.gather(*(one() for _ in range(inflight)))
        state.close()
        return sum(counts)

    out.put(uvloop.run(run()))


def run_clients(target: Any, arg: Any, clients: int, seconds: float) -> float:
    spawn = mp.get_context("spawn")
    out = spawn.Queue()
    procs = [spawn.Process(target=target, args=(arg, seconds, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join(30)
    return float(total) / seconds


# -- servers ------------------------------------------------------------------------------

def start_coordinator(data_dir: Path, fsync: str) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [PY, "-m", "cluster", "coordinator", "--coordinator-bind", endpoint, "--data-dir",
         str(data_dir), "--fsync", fsync, "--log-level", "warning", "--ready-fd",
         str(write_fd), "--keys", bench_keys()], cwd=ROOT, pass_fds=(write_fd,),
        stderr=subprocess.DEVNULL)
    os.close(write_fd)
    from cluster.plumbing.child import read_ready
    read_ready(read_fd, proc, 20, "coordinator")
    os.close(read_fd)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    member(bench_keys()).coordinator_client(sock)
    sock.connect(endpoint)
    sock.send(wire.encode_one(wire.REGISTER, id="bench-probe", role="probe", info={}))
    pub = ""
    while not pub:
        for msg in wire.decode_frame(sock.recv()):
            if msg["k"] == wire.MEMBERS:
                pub = msg["state"]["pub"]
    sock.close(linger=0)
    ctx.term()
    return proc, endpoint, pub


def start_redis(redis_server: str, data_dir: Path, appendfsync: str
                ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([redis_server, "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(data_dir), "--appendonly", "yes", "--appendfsync",
                             appendfsync, "--save", "", "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(port=port).ping()
            return proc, port
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # poll: waiting for redis to listen


def start_etcd(data_dir: Path, fsync: bool = True) -> tuple[list[subprocess.Popen[bytes]], str]:
    """Three etcd members on 127.0.0.1, one cluster; the --state-backend URL. Without
    `fsync`, with etcd's --unsafe-no-fsync (a measurement of what fsync costs)."""
    etcd = shutil.which("etcd")
    if etcd is None:
        sys.exit("etcd is needed: apt-get install etcd-server etcd-client")
    ports = [(free_port(), free_port()) for _ in range(3)]
    peers = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
    procs = []
    for i, (client, peer) in enumerate(ports):
        procs.append(subprocess.Popen(
            [etcd, "--name", f"m{i}", "--data-dir", str(data_dir / f"m{i}"),
             "--listen-client-urls", f"http://127.0.0.1:{client}",
             "--advertise-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", peers, "--initial-cluster-state", "new", "--pre-vote",
             *([] if fsync else ["--unsafe-no-fsync"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    endpoints = ",".join(f"127.0.0.1:{client}" for client, _ in ports)
    deadline = time.monotonic() + 30
    while subprocess.run(["etcdctl", "--endpoints", endpoints, "endpoint", "health"],
                         capture_output=True, env={**os.environ, "ETCDCTL_API": "3"},
                         timeout=10).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("etcd did not become healthy")
        time.sleep(0.2)  # poll: waiting for the members to elect a leader
    return procs, f"etcd://{endpoints}/bench"


def etcd_propagation(url: str, samples: int) -> tuple[list[float], list[float]]:
    """Write→ack (committed and applied by the writer's replica) and write→another
    replica, one write at a time."""
    import asyncio

    import uvloop

    from cluster.etcd.state import EtcdState
    from cluster.plumbing.config import WorkerConfig

    async def run() -> tuple[list[float], list[float]]:
        loop = asyncio.get_running_loop()
        config = WorkerConfig(handler="bench:none", state_backend=url)
        writer, reader = EtcdState(loop, config, {}), EtcdState(loop, config, {})
        for state in (writer, reader):
            state.start()
            await asyncio.wait_for(state.synced.wait(), 20)
        acks: list[float] = []
        seen: list[float] = []
        for rid in range(1, samples + 1):
            t0 = time.perf_counter()
            await writer.acall([["set", "probe", rid, 0]])
            acks.append((time.perf_counter() - t0) * 1000)
            # The writer's replica holds its write (read-your-writes): the reader's
            # watch must bring it to the same revision.
            await reader._applied(writer.replica.seq, loop.time() + 5)
            assert reader.replica.data.get("probe", (None, 0))[0] == rid
            seen.append((time.perf_counter() - t0) * 1000)
        writer.close()
        reader.close()
        return acks, seen

    result: tuple[list[float], list[float]] = uvloop.run(run())
    return result


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def propagation(endpoint: str, pub: str, samples: int) -> tuple[list[float], list[float]]:
    """Write→ack and write→replica times, one write at a time."""
    ctx = zmq.Context()
    curve = member(bench_keys())
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    curve.coordinator_client(sub)
    sub.connect(pub)
    sock = ctx.socket(zmq.DEALER)
    curve.coordinator_client(sock)
    sock.connect(endpoint)
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    poller.register(sock, zmq.POLLIN)
    time.sleep(0.3)  # let the subscription reach the publisher before measuring
    acks: list[float] = []
    seen: list[float] = []
    for rid in range(1, samples + 1):
        t0 = time.perf_counter()
        sock.send(wire.encode_one(wire.STATE_OP, id="bench", rid=rid,
                                  ops=[["set", "probe", rid, 0]]))
        ack_at = upd_at = 0.0
        while not (ack_at and upd_at):
            if not poller.poll(5000):
                raise RuntimeError("no answer within 5 s")
            if sock.poll(0):
                for msg in wire.decode_frame(sock.recv()):
                    if msg["k"] == wire.STATE_ACK and msg["rid"] == rid:
                        ack_at = time.perf_counter()
            if sub.poll(0):
                for msg in wire.decode_frame(sub.recv()):
                    if msg["k"] == wire.UPDATE and msg["changes"][0][1] == rid:
                        upd_at = time.perf_counter()
        acks.append((ack_at - t0) * 1000)
        seen.append((upd_at - t0) * 1000)
    ctx.destroy(linger=0)
    return acks, seen


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    redis_server = ensure_redis()
    rows: dict[str, list[float]] = {}
    latency: dict[str, tuple[list[float], list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        for rnd in range(args.rounds):
            for label, kind, mode in [("cluster --fsync batch", "cluster", "batch"),
                                      ("redis appendfsync everysec", "redis", "everysec"),
                                      ("cluster --fsync always", "cluster", "always"),
                                      ("redis appendfsync always", "redis", "always"),
                                      ("etcd, 3 members", "etcd", "shared"),
                                      ("etcd, 3 members, a key per client", "etcd", "own"),
                                      ("etcd, 3 members, 1 client with 64 in flight", "etcd",
                                       "group")]:
                data = Path(tmp) / f"{kind}-{mode}-{rnd}"
                data.mkdir()
                if kind == "etcd":
                    members, url = start_etcd(data)
                    grouped = mode == "group"
                    rate = run_clients(etcd_client, (url, mode == "own", 64 if grouped else 1),
                                       1 if grouped else args.clients, args.seconds)
                    if rnd == 0 and mode == "shared":
                        latency[label] = etcd_propagation(url, min(args.samples, 500))
                    for member_proc in members:
                        stop(member_proc)
                    rows.setdefault(label, []).append(rate)
                    print(f"round {rnd + 1} {label}: {rate:,.0f} ops/s", file=sys.stderr)
                    continue
                if kind == "cluster":
                    proc, endpoint, pub = start_coordinator(data, mode)
                    rate = run_clients(cluster_client, (endpoint, bench_keys()), args.clients,
                                       args.seconds)
                    if rnd == 0:
                        latency[label] = propagation(endpoint, pub, args.samples)
                else:
                    proc, port = start_redis(redis_server, data, mode)
                    rate = run_clients(redis_client, port, args.clients, args.seconds)
                stop(proc)
                rows.setdefault(label, []).append(rate)
                print(f"round {rnd + 1} {label}: {rate:,.0f} ops/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{args.clients} client processes, one INCR in flight each, {args.seconds:.0f} s, "
          f"{args.rounds} rounds; medians\n")
    print("Every row increments one key all clients share, but \"a key per client\".\n")
    print("| server | INCR ops/s |\n|---|---:|")
    for label, rate in med.items():
        print(f"| {label} | {rate:,.0f} |")
    print(f"\n| ratio | value |\n|---|---:|"
          f"\n| cluster batch / redis everysec | "
          f"{med['cluster --fsync batch'] / med['redis appendfsync everysec']:.2f} |"
          f"\n| cluster always / redis always | "
          f"{med['cluster --fsync always'] / med['redis appendfsync always']:.2f} |"
          f"\n| etcd / cluster always | "
          f"{med['etcd, 3 members'] / med['cluster --fsync always']:.2f} |")
    print(f"\nOne writer, {args.samples} sequential writes (ms):\n")
    print("| coordinator | write→ack p50 | p99 | write→replica p50 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, (acks, seen) in latency.items():
        print(f"| {label} | {pct(acks, .5):.3f} | {pct(acks, .99):.3f} | "
              f"{pct(seen, .5):.3f} | {pct(seen, .99):.3f} | {max(seen):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
