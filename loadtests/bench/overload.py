"""What idle and slow clients cost the ones being served.

One `cluster run` (1 gateway, 1 worker, the sync hello handler), measured by wrk in
turns: alone, then with a siege beside it: 10,000 idle keep-alive connections (each
made one request, then holds its socket), 1,000 slowloris connections (a request
line, then one header byte every 5 s, forever; the gateway answers 408 after
--header-timeout and the attacker connects again) and 1,000 stalled bodies (a POST
that declares 1 MiB - 1 byte, sends 128 KiB of it, then a byte every 5 s: together
125 MiB of unfinished bodies held at the gateway; it answers 408 after
--body-total-timeout and the attacker connects again). The siege runs in a process
of its own, so its CPU is not counted as the server's.

The gateway runs with --keepalive-timeout 600 for this: with the default (5 s) the
idle connections would be closed and re-opened all the time, and the run would
measure connection churn, not idleness.

    python -m loadtests.bench.overload --rounds 3 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from loadtests.bench.servers import BIN, ROOT, Server, WrkResult, ensure_wrk, free_port, run_wrk

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter

IDLE = 10_000
SLOW = 1_000
SLOW_EVERY = 5.0  # seconds between a slowloris connection's header bytes
STALLED = 1_000
STALLED_SENT = 128 * 1024  # body bytes a stalled connection sends before it drips
OPENING = 200  # connections being opened at once (the listen backlog is 2048)


# -- the siege (its own process) --------------------------------------------------------

class Siege:
    def __init__(self, port: int) -> None:
        self.port = port
        self.idle = 0
        self.slow = 0
        self.stalled = 0
        self.reconnects = 0
        self.failed = 0
        self.gate = asyncio.Semaphore(OPENING)

    async def _open(self) -> tuple[Reader, Writer] | None:
        async with self.gate:
            try:
                return await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.failed += 1
                await asyncio.sleep(1.0)  # the server is full or gone: back off
                return None

    async def _keep_connected(self, behave: Callable[[Reader, Writer], Awaitable[None]]
                              ) -> None:
        """One attacker: connected, behaving, and connected again when the server
        closes it (each time after the first counted as a reconnect)."""
        first = True
        while True:
            opened = await self._open()
            if opened is None:
                continue
            reader, writer = opened
            if not first:
                self.reconnects += 1
            first = False
            try:
                await behave(reader, writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
            finally:
                writer.close()

    async def _idle(self, reader: Reader, writer: Writer) -> None:
        """One request, then hold the socket until the server closes it."""
        writer.write(b"GET / HTTP/1.1\r\nHost: siege\r\n\r\n")
        await reader.readuntil(b"hello\n")
        self.idle += 1
        try:
            await reader.read(1)
        finally:
            self.idle -= 1

    async def _slow(self, reader: Reader, writer: Writer) -> None:
        """A request line, then one header byte every SLOW_EVERY seconds."""
        self.slow += 1
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: siege\r\nX-Slow: ")
            while not reader.at_eof():
                await asyncio.sleep(SLOW_EVERY)
                writer.write(b"a")
                await writer.drain()
        finally:
            self.slow -= 1

    async def _stalled_body(self, reader: Reader, writer: Writer) -> None:
        """A POST declaring 1 MiB - 1 byte: 128 KiB of it, then a byte every SLOW_EVERY."""
        writer.write(b"POST / HTTP/1.1\r\nHost: siege\r\nContent-Length: 1048575\r\n\r\n" +
                     b"s" * STALLED_SENT)
        await writer.drain()
        self.stalled += 1
        try:
            while not reader.at_eof():
                await asyncio.sleep(SLOW_EVERY)
                writer.write(b"s")
                await writer.drain()
        finally:
            self.stalled -= 1

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._keep_connected(self._idle)) for _ in range(IDLE)]
        tasks += [asyncio.create_task(self._keep_connected(self._slow)) for _ in range(SLOW)]
        tasks += [asyncio.create_task(self._keep_connected(self._stalled_body))
                  for _ in range(STALLED)]
        announced = False
        while True:
            await asyncio.sleep(1.0)
            if not announced and self.idle >= IDLE and self.slow >= SLOW and \
                    self.stalled >= STALLED:
                print("siege up", flush=True)
                announced = True
            print(f"idle {self.idle} slow {self.slow} stalled {self.stalled} reconnects "
                  f"{self.reconnects} failed {self.failed}", file=sys.stderr, flush=True)


def siege_main(port: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop
    uvloop.run(Siege(port).run())


# -- the benchmark ----------------------------------------------------------------------

def start_siege(port: int, log: Path) -> subprocess.Popen[str]:
    with open(log, "w") as err:
        popen = subprocess.Popen([sys.executable, "-m", "loadtests.bench.overload", "--siege",
                                  str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
                                 text=True, start_new_session=True)
    assert popen.stdout is not None
    line = popen.stdout.readline()  # "siege up", or "" if it died
    if line.strip() != "siege up":
        stop(popen)
        raise RuntimeError(f"the siege did not come up; see {log}")
    return popen


def stop(popen: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait(30)


def rss_mib(session: int) -> float:
    """Resident memory of the gateway processes in `session`."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[3]) != session or b"gateway" not in cmdline:
            continue
        for line in Path(f"/proc/{name}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--siege", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.siege:
        siege_main(args.siege)
        return 0
    wrk = ensure_wrk()
    port = free_port()
    server = Server("cluster", [
        str(BIN / "python"), "-m", "cluster", "run", "--handler", "examples.hello:fun",
        "--port", str(port), "--workers", "1", "--log-level", "warning",
        "--keepalive-timeout", "600", "--max-connections", str(IDLE + SLOW + STALLED + 1000)], port)
    results: dict[str, list[WrkResult]] = {"quiet": [], "siege": []}
    memory: dict[str, list[float]] = {"quiet": [], "siege": []}
    log = Path("/tmp/cluster-siege.log")
    try:
        server.wait_ready()
        for rnd in range(args.rounds):
            for kind in ("quiet", "siege"):
                siege = start_siege(port, log) if kind == "siege" else None
                try:
                    began = time.monotonic()
                    res = run_wrk(wrk, server.url, args.seconds, args.connections, 2,
                                  sid=server.popen.pid)
                    memory[kind].append(rss_mib(server.popen.pid))
                finally:
                    if siege is not None:
                        stop(siege)
                results[kind].append(res)
                split = " ".join(f"{role} {us:.1f}" for role, us in res.cpu_us.items())
                print(f"round {rnd + 1} {kind}: {res.rps:.0f} req/s p99 {res.p99_ms:.2f} ms "
                      f"errors {res.errors}; CPU µs/req {split}; gateway RSS "
                      f"{memory[kind][-1]:.0f} MiB ({time.monotonic() - began:.0f} s)",
                      flush=True)
    finally:
        server.stop()
    print()
    print(f"wrk -t2 -c{args.connections} -d{args.seconds}s, {args.rounds} rounds in turns; "
          f"siege: {IDLE} idle keep-alive + {SLOW} slowloris + {STALLED} stalled-body "
          "connections")
    print("| run | req/s median [range] | p99 ms median [range] | CPU µs/req gateway | "
          "worker | gateway RSS MiB | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind, rounds in results.items():
        rps = [r.rps for r in rounds]
        p99 = [r.p99_ms for r in rounds]
        gw = statistics.median(r.cpu_us.get("gateway", 0.0) for r in rounds)
        wk = statistics.median(r.cpu_us.get("worker", 0.0) for r in rounds)
        print(f"| {kind} | {statistics.median(rps):,.0f} [{min(rps):,.0f}-{max(rps):,.0f}] | "
              f"{statistics.median(p99):.2f} [{min(p99):.2f}-{max(p99):.2f}] | {gw:.1f} | "
              f"{wk:.1f} | {statistics.median(memory[kind]):.0f} | "
              f"{sum(r.errors for r in rounds)} |")
    quiet_rps = statistics.median(r.rps for r in results["quiet"])
    siege_rps = statistics.median(r.rps for r in results["siege"])
    quiet_p99 = statistics.median(r.p99_ms for r in results["quiet"])
    siege_p99 = statistics.median(r.p99_ms for r in results["siege"])
    print(f"\nreq/s under siege: {siege_rps / quiet_rps:.2f}x (target ≥ 0.90); "
          f"p99: {siege_p99 / quiet_p99:.2f}x (target ≤ 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
