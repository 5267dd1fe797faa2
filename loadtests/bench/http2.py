"""HTTP/2 benchmark: the cluster against hypercorn on the same ASGI app, with h2load
(10 connections x 10 streams), in turns, in one run.

    .venv/bin/python -m loadtests.bench.http2 [--rounds 3] [--seconds 10]

(a) `cluster run` with 1 gateway and 1 worker running loadtests/bench/asgi_hello.py
(b) hypercorn --workers 2 on the same app (loadtests/bench/hypercorn_config.py lifts
    its cap of 1,000 requests per connection, which h2load does not survive)

Both in cleartext (HTTP/2 with prior knowledge, h2c) and over TLS (h2 by ALPN), with
a certificate made for the run. h2load runs a, b, a', b', a, b, ... so drift on the
machine hits all alike. CPU per request is every process of each server's session
(utime + stime from /proc, around each run) over the requests h2load counted.
"""

from __future__ import annotations

import argparse
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.bench.servers import BIN, Server, cpu_by_role, free_port, session_cpu

APP = "loadtests.bench.asgi_hello:app"


@dataclass
class H2Run:
    rps: float
    mean_ms: float  # h2load's mean time per request (it reports no percentiles)
    failed: int
    requests: int
    cpu_us: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu_us.values())


def parse_h2load(output: str) -> H2Run:
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output).group(1))  # type: ignore[union-attr]
    counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", output)
    assert counts is not None, output
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", output)
    mean_ms = 0.0
    if mean is not None:
        value = mean.group(1)
        mean_ms = float(value[:-2]) / 1000 if value.endswith("us") else \
            float(value[:-2]) if value.endswith("ms") else float(value[:-1]) * 1000
    done, ok, failed, errored, timeout = (int(g) for g in counts.groups())
    return H2Run(rps, mean_ms, failed + errored + timeout + (done - ok), ok)


def run_h2load(h2load: str, url: str, seconds: int, sid: int) -> H2Run:
    before = session_cpu(sid)
    out = subprocess.run([h2load, "-c", "10", "-m", "10", "-t", "1", "-D", str(seconds),
                          "--warm-up-time", "1", url], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    result = parse_h2load(out)
    result.cpu_us = cpu_by_role(before, session_cpu(sid), result.requests)
    return result


def certificate(where: Path) -> tuple[str, str]:
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def servers(tls: tuple[str, str]) -> dict[str, tuple[Server, str]]:
    """name -> (server, the URL h2load asks)."""
    py = str(BIN / "python")
    quiet = ["--log-level", "warning"]
    a, b, c, d = (free_port() for _ in range(4))
    cert, key = tls
    hypercorn = [py, "-m", "hypercorn", "--config", "python:loadtests.bench.hypercorn_config",
                 "--workers", "2"]
    return {
        "a: cluster 1 gw + 1 worker, h2c": (Server("cluster", [
            py, "-m", "cluster", "run", "--handler", APP, "--port", str(a), "--workers", "1",
            *quiet], a), f"http://127.0.0.1:{a}/"),
        "b: hypercorn --workers 2, h2c": (Server("hypercorn", [
            *hypercorn, APP, "--bind", f"127.0.0.1:{b}"], b), f"http://127.0.0.1:{b}/"),
        "c: cluster 1 gw + 1 worker, TLS": (Server("cluster-tls", [
            py, "-m", "cluster", "run", "--handler", APP, "--port", str(c), "--workers", "1",
            "--certfile", cert, "--keyfile", key, *quiet], c), f"https://127.0.0.1:{c}/"),
        "d: hypercorn --workers 2, TLS": (Server("hypercorn-tls", [
            *hypercorn, "--certfile", cert, "--keyfile", key, APP, "--bind",
            f"127.0.0.1:{d}"], d), f"https://127.0.0.1:{d}/"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    h2load = shutil.which("h2load")
    if h2load is None:
        sys.exit("h2load is needed: apt-get install nghttp2-client (make test installs it)")
    results: dict[str, list[H2Run]] = {}
    with tempfile.TemporaryDirectory(prefix="h2-bench-") as tmp:
        running = servers(certificate(Path(tmp)))
        try:
            for server, url in running.values():
                server.url = url
                server.wait_ready(context=ssl._create_unverified_context())
            for rnd in range(args.rounds):
                for name, (server, url) in running.items():
                    run = run_h2load(h2load, url, args.seconds, server.popen.pid)
                    results.setdefault(name, []).append(run)
                    split = " ".join(f"{r} {us:.1f}" for r, us in run.cpu_us.items())
                    print(f"round {rnd + 1} {name}: {run.rps:,.0f} req/s, mean "
                          f"{run.mean_ms:.2f} ms, failed {run.failed}; CPU µs/req "
                          f"{run.cpu_total:.1f} ({split})", file=sys.stderr)
        finally:
            for server, _url in running.values():
                server.stop()
    print(f"h2load -c 10 -m 10 -D {args.seconds}, {args.rounds} rounds in turns; medians, "
          f"[min-max] over the rounds\n")
    print("| server | req/s | mean ms | failed | CPU µs/req | by process |")
    print("|---|---:|---:|---:|---:|---|")
    medians: dict[str, float] = {}
    for name, runs in results.items():
        rps = [r.rps for r in runs]
        cpu = [r.cpu_total for r in runs]
        medians[name] = statistics.median(rps)
        roles = sorted({role for r in runs for role in r.cpu_us})
        split = ", ".join(f"{role} {statistics.median(r.cpu_us.get(role, 0.0) for r in runs):.1f}"
                          for role in roles)
        print(f"| {name} | {medians[name]:,.0f} [{min(rps):,.0f}-{max(rps):,.0f}] | "
              f"{statistics.median(r.mean_ms for r in runs):.2f} | "
              f"{sum(r.failed for r in runs)} | {statistics.median(cpu):.1f} "
              f"[{min(cpu):.1f}-{max(cpu):.1f}] | {split} |")
    names = list(medians)
    print("\n| ratio | value | target |\n|---|---:|---:|")
    print(f"| req/s a/b (cleartext) | {medians[names[0]] / medians[names[1]]:.2f} | ≥ 2.0 |")
    print(f"| req/s c/d (TLS) | {medians[names[2]] / medians[names[3]]:.2f} | ≥ 2.0 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
