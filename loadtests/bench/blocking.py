"""Blocking handlers: how close 16 one-at-a-time workers come to their ideal rate.

    .venv/bin/python -m loadtests.bench.blocking [--rounds 3] [--seconds 10] [--connections 64]

`cluster run` with 16 workers, each `--concurrency 1 --threads 1`, on a sync handler
that blocks for 10 ms (loadtests/bench/blocking_app.py). Each worker can serve at
most 100 requests a second, so 16 of them at most 1,600: the figure is the share of
that ideal served, which is what dispatch, credit and the hop cost a slow handler.
Target: at least 95%. Two clusters in turns: the default `--prefetch 1` and
`--prefetch 0`, where a freed slot waits for the round trip that brings it the next
request.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from loadtests.bench.blocking_app import WORK_SECONDS
from loadtests.bench.servers import BIN, Server, ensure_wrk, free_port, run_wrk, wrk_arguments

WORKERS = 16


def cluster(prefetch: int) -> Server:
    port = free_port()
    return Server(f"prefetch {prefetch}", [
        str(BIN / "python"), "-m", "cluster", "run", "--handler",
        "loadtests.bench.blocking_app:fun", "--port", str(port), "--workers", str(WORKERS),
        "--concurrency", "1", "--threads", "1", "--prefetch", str(prefetch),
        "--log-level", "warning"], port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    wrk_arguments(parser)
    args = parser.parse_args()
    wrk = ensure_wrk()
    servers = [cluster(1), cluster(0)]
    ideal = WORKERS / WORK_SECONDS
    shares: dict[str, list[float]] = {s.name: [] for s in servers}
    try:
        for server in servers:
            server.wait_ready(timeout=60)
            # `cluster run` answers once its first worker is ready; the others link to
            # the gateway within a few seconds. A short unmeasured run covers that.
            run_wrk(wrk, server.url, 3, args.connections, args.threads)
        for rnd in range(args.rounds):
            for server in servers:
                res = run_wrk(wrk, server.url, args.seconds, args.connections, args.threads)
                shares[server.name].append(res.rps / ideal)
                print(f"round {rnd + 1} {server.name}: {res.rps:.0f} req/s "
                      f"({res.rps / ideal:.1%} of {ideal:.0f}) p50 {res.p50_ms:.1f} ms "
                      f"p99 {res.p99_ms:.1f} ms errors {res.errors}", file=sys.stderr)
    finally:
        for server in servers:
            server.stop()
    print(f"{WORKERS} workers x --concurrency 1 --threads 1, a {WORK_SECONDS * 1000:.0f} ms "
          f"blocking handler; ideal {ideal:,.0f} req/s; wrk -c{args.connections}, "
          f"{args.rounds} rounds in turns\n")
    print("| cluster | served, median [min-max] | target |\n|---|---:|---:|")
    for name, got in shares.items():
        print(f"| {name} | {statistics.median(got):.1%} [{min(got):.1%}-{max(got):.1%}] | "
              f"≥ 95% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
