"""Start and stop the servers a benchmark compares; wrk runs and their parsing."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed: apt-get install wrk")
    return found


class Server:
    def __init__(self, name: str, argv: list[str], port: int) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.popen = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}")
            time.sleep(0.1)  # poll: waiting for the server to answer
        raise RuntimeError(f"{self.name} did not answer within {timeout}s")

    def stop(self) -> None:
        """Stop the server and its children by its process group."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        errors += sum(int(g) for g in m.groups())
    return WrkResult(rps, p50, p99, errors)


def run_wrk(wrk: str, url: str, seconds: int, connections: int, threads: int) -> WrkResult:
    out = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
                          "--latency", url], capture_output=True, text=True,
                         timeout=seconds + 30, check=True).stdout
    return parse_wrk(out)


def wrk_arguments(parser: Any) -> None:
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)


def compare_in_turns(running: dict[str, Server], args: Any
                     ) -> dict[str, tuple[float, float, float, int]]:
    """wrk against every server in turns (A B C, A B C, ...), so drift on the machine
    hits all alike; prints a table of medians and returns
    name -> (req/s, p50 ms, p99 ms, errors)."""
    wrk = ensure_wrk()
    results: dict[str, list[WrkResult]] = {name: [] for name in running}
    try:
        for server in running.values():
            server.wait_ready()
        for rnd in range(args.rounds):
            for name, server in running.items():
                res = run_wrk(wrk, server.url, args.seconds, args.connections, args.threads)
                results[name].append(res)
                print(f"round {rnd + 1} {name}: {res.rps:.0f} req/s p50 {res.p50_ms:.2f} ms "
                      f"p99 {res.p99_ms:.2f} ms errors {res.errors}", file=sys.stderr)
    finally:
        for server in running.values():
            server.stop()
    med = {name: (statistics.median(r.rps for r in rs), statistics.median(r.p50_ms for r in rs),
                  statistics.median(r.p99_ms for r in rs), sum(r.errors for r in rs))
           for name, rs in results.items()}
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, {args.rounds} rounds "
          f"in turns; medians\n")
    print("| server | req/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|")
    for name, (rps, p50, p99, errors) in med.items():
        print(f"| {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errors} |")
    return med
