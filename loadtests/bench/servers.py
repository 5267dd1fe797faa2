"""Start and stop the servers a benchmark compares; wrk runs and their parsing."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


_KEYS: list[str] = []


def bench_keys() -> str:
    """A CURVE key directory for the processes a benchmark starts by itself (a pair per
    role, as `cluster keygen` writes them), made once per run and removed at exit:
    the cluster is measured as it ships, authenticated."""
    if not _KEYS:
        import atexit

        from cluster.plumbing.security import ROLE_KEYS, keygen
        directory = tempfile.mkdtemp(prefix="bench-keys-")
        keygen(directory, ROLE_KEYS)
        atexit.register(shutil.rmtree, directory, True)
        _KEYS.append(directory)
    return _KEYS[0]


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
    def __init__(self, name: str, argv: list[str], port: int, cwd: Path = ROOT,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        # cwd: `python -m cluster` runs the checkout it starts in (a baseline's too).
        self.popen = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True,
                                      env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 30.0, context: ssl.SSLContext | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url, timeout=1, context=context) as resp:
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
    requests: int = 0
    cpu_us: dict[str, float] = field(default_factory=dict)  # CPU µs per request, by role

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu_us.values())


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _role(pid: str) -> str:
    """What a process of a benchmarked server is, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv]
    if "cluster" in words[1:3] or any(w.endswith("/cluster") for w in words[:2]):
        at = words.index("cluster") if "cluster" in words else 0
        rest = words[at + 1:at + 2]
        role = rest[0] if rest else "cluster"
        return "supervisor" if role == "run" else role
    if any("uvicorn" in w for w in words[:2]):
        return "uvicorn"
    if "hypercorn" in words[1:3] or any(w.endswith("/hypercorn") for w in words[:2]):
        return "hypercorn"
    if any("multiprocessing" in w for w in words):
        # uvicorn's and hypercorn's worker processes: named after their parent
        stat = Path(f"/proc/{pid}/stat").read_text()
        return _role(stat[stat.rindex(")") + 2:].split()[1])
    return Path(words[0]).name if words and words[0] else "?"


def session_cpu(sid: int) -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds used so far: utime + stime) for every process in
    session `sid` (each benchmarked server runs in a session of its own)."""
    out: dict[int, tuple[str, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) != sid:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        out[int(name)] = (_role(name), seconds)
    return out


def cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                requests: int) -> dict[str, float]:
    """CPU µs per request by role, between two `session_cpu` readings."""
    used: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        spent = seconds - before.get(pid, (role, 0.0))[1]
        used[role] = used.get(role, 0.0) + spent
    return {role: s * 1e6 / max(requests, 1) for role, s in sorted(used.items())}


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
    m = re.search(r"(\d+) requests in", output)
    requests = int(m.group(1)) if m else 0
    return WrkResult(rps, p50, p99, errors, requests)


def run_wrk(wrk: str, url: str, seconds: int, connections: int, threads: int,
            sid: int | None = None) -> WrkResult:
    """One wrk run; with `sid`, also the CPU per request of that session's processes."""
    before = session_cpu(sid) if sid is not None else {}
    out = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
                          "--latency", url], capture_output=True, text=True,
                         timeout=seconds + 30, check=True).stdout
    result = parse_wrk(out)
    if sid is not None:
        result.cpu_us = cpu_by_role(before, session_cpu(sid), result.requests)
    return result


def wrk_arguments(parser: Any) -> None:
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)


@dataclass
class Summary:
    """One server's rounds: medians, and the range of req/s and CPU per request."""

    rounds: list[WrkResult]

    def median(self, what: str) -> float:
        return float(statistics.median(getattr(r, what) for r in self.rounds))

    def span(self, what: str) -> tuple[float, float]:
        values = [getattr(r, what) for r in self.rounds]
        return min(values), max(values)

    @property
    def rps(self) -> float:
        return self.median("rps")

    @property
    def p99_ms(self) -> float:
        return self.median("p99_ms")

    @property
    def cpu_total(self) -> float:
        return self.median("cpu_total")

    def cpu_role(self, role: str) -> float:
        return statistics.median(r.cpu_us.get(role, 0.0) for r in self.rounds)

    @property
    def roles(self) -> list[str]:
        return sorted({role for r in self.rounds for role in r.cpu_us})

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)


def compare_in_turns(running: dict[str, Server], args: Any) -> dict[str, Summary]:
    """wrk against every server in turns (A B C, A B C, ...), so drift on the machine
    hits all alike; prints a table of medians and ranges, with the CPU each server's
    processes spent per request, by role."""
    wrk = ensure_wrk()
    results: dict[str, list[WrkResult]] = {name: [] for name in running}
    try:
        for server in running.values():
            server.wait_ready()
        for rnd in range(args.rounds):
            for name, server in running.items():
                res = run_wrk(wrk, server.url, args.seconds, args.connections, args.threads,
                              sid=server.popen.pid)
                results[name].append(res)
                split = " ".join(f"{role} {us:.1f}" for role, us in res.cpu_us.items())
                print(f"round {rnd + 1} {name}: {res.rps:.0f} req/s p50 {res.p50_ms:.2f} ms "
                      f"p99 {res.p99_ms:.2f} ms errors {res.errors}; CPU µs/req "
                      f"{res.cpu_total:.1f} ({split})", file=sys.stderr)
    finally:
        for server in running.values():
            server.stop()
    summaries = {name: Summary(rs) for name, rs in results.items()}
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, {args.rounds} rounds "
          f"in turns; medians, [min-max] over the rounds\n")
    print("| server | req/s | p50 ms | p99 ms | errors | CPU µs/req | by process |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, sm in summaries.items():
        lo, hi = sm.span("rps")
        clo, chi = sm.span("cpu_total")
        split = ", ".join(f"{role} {sm.cpu_role(role):.1f}" for role in sm.roles)
        print(f"| {name} | {sm.rps:,.0f} [{lo:,.0f}-{hi:,.0f}] | {sm.median('p50_ms'):.2f} | "
              f"{sm.p99_ms:.2f} | {sm.errors} | {sm.cpu_total:.1f} [{clo:.1f}-{chi:.1f}] | "
              f"{split} |")
    return summaries
