"""HTTP benchmark: cluster vs uvicorn vs the gateway alone, in turns, in one run.

    .venv/bin/python -m loadtests.bench.http [--rounds 3] [--seconds 10] [--connections 64]

(a) `cluster run` with 1 gateway and 1 worker on examples/hello (a sync plain function)
(b) uvicorn --workers 2 --http httptools --loop uvloop on an equivalent raw ASGI app
(c) the same gateway answering by itself, no ZeroMQ hop: the ceiling for (a)
(d) as (a) with an async handler: the hop without the thread pool

wrk runs A B C D, A B C D, ... so drift in the machine hits all alike; the table
shows each one's median over the rounds, and the ratios of those medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from loadtests.bench.servers import BIN, Server, WrkResult, ensure_wrk, free_port, run_wrk


def servers() -> dict[str, Server]:
    py = str(BIN / "python")
    a, b, c, d = (free_port() for _ in range(4))
    quiet = ["--log-level", "warning"]
    return {
        "a: cluster 1 gw + 1 worker (sync fun)": Server("cluster", [
            py, "-m", "cluster", "run", "--handler", "examples.hello:fun", "--port", str(a),
            "--workers", "1", *quiet], a),
        "b: uvicorn --workers 2": Server("uvicorn", [
            str(BIN / "uvicorn"), "loadtests.bench.asgi_hello:app", "--port", str(b),
            "--workers", "2", "--http", "httptools", "--loop", "uvloop",
            "--no-access-log", "--log-level", "warning"], b),
        "c: gateway alone (no hop)": Server("gateway", [
            py, "-m", "cluster", "gateway", "--port", str(c), "--local-reply", "hello\n",
            "--coordinator", "tcp://127.0.0.1:1", "--log-level", "error"], c),
        "d: cluster 1 gw + 1 worker (async fun)": Server("cluster-async", [
            py, "-m", "cluster", "run", "--handler", "examples.hello:afun", "--port", str(d),
            "--workers", "1", *quiet], d),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    wrk = ensure_wrk()
    running = servers()
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
    names = list(med)
    a, b, c, d = (med[n][0] for n in names)
    print(f"\n| ratio | value |\n|---|---:|\n| a/b (cluster / uvicorn) | {a / b:.2f} |"
          f"\n| a/c (cluster / gateway alone) | {a / c:.2f} |"
          f"\n| d/b (async handler / uvicorn) | {d / b:.2f} |"
          f"\n| p99 a/b | {med[names[0]][2] / med[names[1]][2]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
