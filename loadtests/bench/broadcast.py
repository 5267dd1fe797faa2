"""Broadcast benchmark: one publisher, 1,000 WebSocket clients in one group, spread
over two server processes; delivered messages/s and publish→receive latency.

    .venv/bin/python -m loadtests.bench.broadcast [--clients 1000] [--rates 100,200,400]

Side by side, in one run, with the same client processes:

- cluster: a coordinator, 2 gateways (500 clients each), 1 worker whose handler joins
  every connection to the group; `cluster.publisher.Publisher` broadcasts.
- history: the same, with history: the handler subscribes every connection and the
  Publisher publishes, so each message goes to the coordinator, is numbered and kept
  there, and reaches the clients as {"group", "epoch", "offset", "data"} JSON.
- socketio: python-socketio's AsyncServer with AsyncRedisManager on uvicorn
  --workers 2 (the kernel spreads the 1,000 clients over both), Debian's
  redis-server between them; an AsyncRedisManager(write_only=True) publishes,
  the way python-socketio documents emitting from an external process.

For each offered rate R the publisher sends R messages/s of 100 bytes for
--seconds (after two rates a server could not keep up with, it stops), each
carrying its send time (CLOCK_MONOTONIC is one clock for every
process on the machine). Delivered messages/s is what all clients received divided
by the time from the first publish to the last delivery; a server that falls
behind shows it as a lower rate and a growing latency. Clients neither offer
permessage-deflate nor send anything but protocol answers (pongs, socket.io's
pings and namespace connect).

The clients read frames with a few lines of their own rather than a WebSocket
library: server frames are unmasked and small, and the client processes share the
2 cores with the servers, so their cost per message is kept to a minimum (it is the
same for both servers).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from cluster.plumbing.child import read_ready
from loadtests.bench.servers import BIN, ROOT, bench_keys, free_port
from loadtests.bench.state import ensure_redis, start_redis, stop

PY = sys.executable
MESSAGE_SIZE = 100
BUCKET = 1e-4  # latency histogram resolution: 0.1 ms
BUCKETS = 100_000  # up to 10 s
SATURATED = 0.9  # a phase delivering under 90% of the offered rate per second
SOCKETIO_PREFIX = b'42["m","'  # a socket.io EVENT packet: 42["m","<message>"]
HISTORY_DATA = b'"data":"'  # a published message: {"group", "epoch", "offset", "data"}
SIDES = ["cluster", "history", "socketio"]


def message(phase: int) -> str:
    """Phase number and send time in fixed columns, padded to 100 bytes."""
    head = f"{phase:02d}{time.monotonic():017.6f}"
    return head + "." * (MESSAGE_SIZE - len(head))


# -- clients (several processes; each holds a share of the connections) ----------

@dataclass
class Tally:
    """What one client process has seen, per phase (phase 0 is the warm-up)."""
    phases: int
    counts: list[int] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    hist: list[dict[int, int]] = field(default_factory=list)
    warmed: int = 0
    closed: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * self.phases
        self.last = [0.0] * self.phases
        self.hist = [{} for _ in range(self.phases)]


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (RFC 6455 requires clients to mask); payloads here are tiny."""
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + body


class Client(asyncio.Protocol):
    def __init__(self, kind: str, tally: Tally, request: bytes) -> None:
        self.kind = kind
        self.tally = tally
        self.request = request
        self.buf = bytearray()
        self.upgraded = False
        self.warm = False
        self.offset = len(SOCKETIO_PREFIX) if kind == "socketio" else 0
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.tally.closed += 1
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(bytes(self.buf[:40]).decode()))
                return
            del self.buf[:end + 4]
            self.upgraded = True
            if self.kind != "socketio":
                self.opened.set_result(None)
        now = time.monotonic()
        buf, pos, size = self.buf, 0, len(self.buf)
        while size - pos >= 2:
            length, head = buf[pos + 1] & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if size - pos < head + length:
                break
            self.frame(buf[pos] & 0x0F, bytes(buf[pos + head:pos + head + length]), now)
            pos += head + length
        del buf[:pos]

    def frame(self, opcode: int, payload: bytes, now: float) -> None:
        assert self.transport is not None
        if opcode == 0x9:  # ping: answer as RFC 6455 requires
            self.transport.write(masked(0xA, payload))
            return
        if opcode != 0x1:
            return
        if self.kind == "socketio" and not payload.startswith(b"42"):
            if payload.startswith(b"0{"):  # engine.io open: connect to namespace "/"
                self.transport.write(masked(0x1, b"40"))
            elif payload.startswith(b"40"):
                self.opened.set_result(None)
            elif payload == b"2":  # engine.io ping
                self.transport.write(masked(0x1, b"3"))
            return
        o = self.offset if self.kind != "history" else \
            payload.find(HISTORY_DATA) + len(HISTORY_DATA)
        phase = int(payload[o:o + 2])
        tally = self.tally
        if phase == 0:
            if not self.warm:
                self.warm = True
                tally.warmed += 1
            return
        tally.counts[phase] += 1
        tally.last[phase] = now
        bucket = min(BUCKETS - 1, int((now - float(payload[o + 2:o + 19])) / BUCKET))
        hist = tally.hist[phase]
        hist[bucket] = hist.get(bucket, 0) + 1


def upgrade_request(kind: str, port: int) -> bytes:
    path = "/socket.io/?EIO=4&transport=websocket" if kind == "socketio" else "/"
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def client_process(kind: str, ports: list[int], count: int, phases: int, shared: Any,
                   stop_event: Any, out: Any) -> None:
    """Open `count` connections, then publish what they see to `shared` every 50 ms:
    [opened, warmed, closed, count per phase..., last delivery per phase...]."""
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    async def run() -> None:
        loop = asyncio.get_running_loop()
        tally = Tally(phases)
        clients: list[Client] = []
        gate = asyncio.Semaphore(50)

        async def open_one(i: int) -> None:
            port = ports[i % len(ports)]
            async with gate:
                _t, client = await loop.create_connection(
                    lambda: Client(kind, tally, upgrade_request(kind, port)),
                    "127.0.0.1", port)
                await asyncio.wait_for(client.opened, 30)
            clients.append(client)

        await asyncio.gather(*(open_one(i) for i in range(count)))
        shared[0] = len(clients)
        while not stop_event.is_set():
            shared[1], shared[2] = tally.warmed, tally.closed
            for p in range(phases):
                shared[3 + p] = tally.counts[p]
                shared[3 + phases + p] = tally.last[p]
            await asyncio.sleep(0.05)  # publish the tally to the coordinating process
        out.put(tally.hist)
        for client in clients:
            if client.transport is not None:
                client.transport.close()

    asyncio.run(run())


# -- servers -----------------------------------------------------------------------------

def start_cluster_role(role: str, *args: str) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([PY, "-m", "cluster", role, *args, "--log-level", "warning",
                             "--ready-fd", str(write_fd)], cwd=ROOT,
                            pass_fds=(write_fd,), start_new_session=True)
    os.close(write_fd)
    info = read_ready(read_fd, proc, 30, role)
    os.close(read_fd)
    return proc, info


class ClusterSide:
    def __init__(self, insecure: bool = False, history: bool = False) -> None:
        """CURVE on every link, as shipped; `insecure` measures its cost. `history`:
        publish (numbered and kept by the coordinator) instead of broadcast."""
        self.kind = "history" if history else "cluster"
        handler = "subscribe_all" if history else "join_all"
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        keys = "" if insecure else bench_keys()
        security = ["--insecure"] if insecure else ["--keys", keys]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        try:
            coord, _ = start_cluster_role("coordinator", "--coordinator-bind", endpoint,
                                          *security)
            self.procs.append(coord)
            for _ in range(2):
                gw, info = start_cluster_role("gateway", "--port", "0", "--coordinator",
                                              endpoint, *security)
                self.procs.append(gw)
                self.ports.append(int(info["port"]))
            worker, _ = start_cluster_role("worker", "--coordinator", endpoint, "--handler",
                                           f"loadtests.bench.broadcast_apps:{handler}",
                                           *security)
            self.procs.append(worker)
        except BaseException:
            self.stop_servers()
            raise
        from cluster.publisher import Publisher
        self.publisher = Publisher(endpoint, keys=keys, insecure=insecure)

    async def publish(self, data: str) -> None:
        if self.kind == "history":
            self.publisher.publish("bench", data)
        else:
            self.publisher.broadcast("bench", data)

    def stop(self) -> None:
        self.publisher.close()
        self.stop_servers()

    def stop_servers(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


class SocketioSide:
    kind = "socketio"

    def __init__(self, redis_server: str, data_dir: Path) -> None:
        self.redis, redis_port = start_redis(redis_server, data_dir, "no")
        url = f"redis://127.0.0.1:{redis_port}/0"
        port = free_port()
        self.ports = [port]
        self.uvicorn = subprocess.Popen(
            [str(BIN / "uvicorn"), "loadtests.bench.broadcast_apps:socketio_app", "--workers",
             "2", "--port", str(port), "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env={**os.environ, "BENCH_REDIS_URL": url},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_listening(port, self.uvicorn)
        import socketio
        self.manager = socketio.AsyncRedisManager(url, write_only=True)

    async def publish(self, data: str) -> None:
        await self.manager.emit("m", data, room="bench", namespace="/")

    def stop(self) -> None:
        stop(self.uvicorn)
        stop(self.redis)


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                # Connections made before uvicorn's workers run wait in the backlog.
                return
        time.sleep(0.1)  # poll: waiting for the server to listen
    raise RuntimeError("server did not listen")


# -- one side's run ---------------------------------------------------------------------

@dataclass
class PhaseResult:
    rate: int
    offered: int
    delivered: int
    per_second: float
    p50_ms: float
    p99_ms: float


def percentile(hist: dict[int, int], p: float) -> float:
    total = sum(hist.values())
    if not total:
        return float("nan")
    goal, seen = total * p, 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= goal:
            return (bucket + 1) * BUCKET * 1000
    return float("nan")


async def run_side(side: Any, clients: int, procs: int, rates: list[int],
                   seconds: float) -> tuple[list[PhaseResult], int]:
    phases = len(rates) + 1
    ctx = mp.get_context("spawn")
    stop_event = ctx.Event()
    out = ctx.Queue()
    shares = [ctx.Array("d", 3 + 2 * phases, lock=False) for _ in range(procs)]
    workers = [ctx.Process(target=client_process,
                           args=(side.kind, side.ports, clients // procs, phases, shares[i],
                                 stop_event, out), daemon=True) for i in range(procs)]
    for w in workers:
        w.start()

    def total(index: int) -> int:
        return int(sum(s[index] for s in shares))

    async def until(check: Any, timeout: float, what: str, tick: Any = None) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{side.kind}: {what} not within {timeout}s")
            if any(not w.is_alive() for w in workers):
                raise RuntimeError(f"{side.kind}: a client process died")
            if tick is not None:
                await tick()
            await asyncio.sleep(0.05)  # poll the clients' shared tally

    results: list[PhaseResult] = []
    try:
        await until(lambda: total(0) == clients, 120, "all clients connected")
        # Warm-up: publish until every connection has received one message, so each
        # is in the group everywhere before anything is measured.
        await until(lambda: total(1) == clients, 60, "every client in the group",
                    tick=lambda: side.publish(message(0)))
        for phase, rate in enumerate(rates, start=1):
            count = int(rate * seconds)
            start = time.monotonic()
            for i in range(count):
                due = start + i / rate
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)  # pace the publisher at the offered rate
                await side.publish(message(phase))
            expected = count * clients
            # Drain: until every message is in, or nothing more arrives for 2 s.
            seen, quiet_since = -1, time.monotonic()
            while total(3 + phase) < expected and time.monotonic() - quiet_since < 2:
                now_seen = total(3 + phase)
                if now_seen != seen:
                    seen, quiet_since = now_seen, time.monotonic()
                await asyncio.sleep(0.05)  # poll the clients' shared tally
            delivered = total(3 + phase)
            last = max(s[3 + phases + phase] for s in shares)
            results.append(PhaseResult(rate, expected, delivered,
                                       delivered / max(last - start, 1e-9), 0.0, 0.0))
            # Past two phases that could not keep up, higher rates only add backlog.
            if sum(r.per_second < SATURATED * r.rate * clients for r in results) >= 2:
                break
        closed = total(2)
    finally:
        stop_event.set()
    hists: list[dict[int, int]] = [{} for _ in range(phases)]
    for _ in workers:
        for phase, hist in enumerate(out.get(timeout=30)):
            for bucket, n in hist.items():
                hists[phase][bucket] = hists[phase].get(bucket, 0) + n
    for w in workers:
        w.join(10)
    for phase, result in enumerate(results, start=1):
        result.p50_ms = percentile(hists[phase], 0.5)
        result.p99_ms = percentile(hists[phase], 0.99)
    return results, closed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--rates", default="5,10,25,50,100,200,400",
                        help="offered broadcasts per second, one phase each")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--only", choices=SIDES)
    parser.add_argument("--insecure", action="store_true",
                        help="the cluster side without CURVE (to measure what it costs)")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    redis_server = ensure_redis()
    table: dict[str, tuple[list[PhaseResult], int]] = {}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        for kind in SIDES:
            if args.only and kind != args.only:
                continue
            side: Any = SocketioSide(redis_server, Path(tmp)) if kind == "socketio" else \
                ClusterSide(args.insecure, history=kind == "history")
            try:
                table[kind] = asyncio.run(run_side(side, args.clients, args.client_processes,
                                                   rates, args.seconds))
            finally:
                side.stop()
            for r in table[kind][0]:
                print(f"{kind} {r.rate}/s: {r.per_second:,.0f} delivered/s "
                      f"({r.delivered}/{r.offered}), p50 {r.p50_ms:.1f} ms, "
                      f"p99 {r.p99_ms:.1f} ms", file=sys.stderr)
    print(f"{args.clients} WebSocket clients in one group over 2 server processes, "
          f"{MESSAGE_SIZE}-byte messages, {args.seconds:.0f} s per offered rate\n")
    print("| server | offered msg/s | delivered msg/s | delivered | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, (results, closed) in table.items():
        for r in results:
            print(f"| {kind} | {r.rate * args.clients:,} | {r.per_second:,.0f} | "
                  f"{100 * r.delivered / r.offered:.1f}% | {r.p50_ms:.1f} | {r.p99_ms:.1f} |")
        if closed:
            print(f"| {kind}: {closed} connections closed by the server | | | | | |")
    print("\n| server | most delivered msg/s | most delivered msg/s with p99 < 50 ms |")
    print("|---|---:|---:|")
    best: dict[str, float] = {}
    for kind, (results, _closed) in table.items():
        best[kind] = max(r.per_second for r in results)
        within = [r.per_second for r in results if r.p99_ms < 50]
        print(f"| {kind} | {best[kind]:,.0f} | "
              f"{f'{max(within):,.0f}' if within else 'none'} |")
    if "cluster" in best and "socketio" in best:
        print(f"\nratio cluster / socketio (most delivered): "
              f"{best['cluster'] / best['socketio']:.2f}")
    if "cluster" in best and "history" in best:
        print(f"ratio history / cluster (most delivered): "
              f"{best['history'] / best['cluster']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
