"""HTTP benchmark: cluster vs uvicorn vs the gateway alone, in turns, in one run.

    .venv/bin/python -m loadtests.bench.http [--rounds 3] [--seconds 10] [--connections 64]

(a) `cluster run` with 1 gateway and 1 worker on examples/hello (a sync plain function)
(b) uvicorn --workers 2 --http httptools --loop uvloop on an equivalent raw ASGI app
(c) the same gateway answering by itself, no ZeroMQ hop: the ceiling for (a)
(d) as (a) with an async handler: the hop without the thread pool

With --pure-too, (h) and (i) are (a) and (d) with CLUSTER_PURE_PYTHON=1: the same
checkout without its compiled modules, in the same turns.

With --baseline DIR (another checkout, for example `git worktree add /tmp/base
REV`), (e) and (f) are (a) and (d) run from that checkout, in the same turns: a
change's before and after in one run. With --insecure-too, (g) is (a) with
`--insecure`: what CURVE on the ZeroMQ links costs (the cluster runs with it by
default, as shipped).

wrk runs A B C D, A B C D, ... so drift in the machine hits all alike; the table
shows each one's median over the rounds, and the ratios of those medians.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadtests.bench.servers import (
    BIN,
    Server,
    bench_keys,
    compare_in_turns,
    free_port,
    wrk_arguments,
)


def servers(baseline: str = "", insecure_too: bool = False,
            pure_too: bool = False) -> dict[str, Server]:
    py = str(BIN / "python")
    a, b, c, d = (free_port() for _ in range(4))
    quiet = ["--log-level", "warning"]
    chosen = {
        "a: cluster 1 gw + 1 worker (sync fun)": Server("cluster", [
            py, "-m", "cluster", "run", "--handler", "examples.hello:fun", "--port", str(a),
            "--workers", "1", *quiet], a),
        "b: uvicorn --workers 2": Server("uvicorn", [
            str(BIN / "uvicorn"), "loadtests.bench.asgi_hello:app", "--port", str(b),
            "--workers", "2", "--http", "httptools", "--loop", "uvloop",
            "--no-access-log", "--log-level", "warning"], b),
        "c: gateway alone (no hop)": Server("gateway", [
            py, "-m", "cluster", "gateway", "--port", str(c), "--local-reply", "hello\n",
            "--coordinator", "tcp://127.0.0.1:1", "--log-level", "error",
            "--keys", bench_keys()], c),
        "d: cluster 1 gw + 1 worker (async fun)": Server("cluster-async", [
            py, "-m", "cluster", "run", "--handler", "examples.hello:afun", "--port", str(d),
            "--workers", "1", *quiet], d),
    }
    if insecure_too:
        port = free_port()
        chosen["g: cluster 1 gw + 1 worker (sync fun), --insecure"] = Server(
            "cluster-insecure", [py, "-m", "cluster", "run", "--handler", "examples.hello:fun",
                                 "--port", str(port), "--workers", "1", "--insecure", *quiet],
            port)
    if pure_too:
        for label, fun in (("h: pure Python, sync fun", "fun"),
                           ("i: pure Python, async fun", "afun")):
            port = free_port()
            chosen[label] = Server(f"pure-{fun}", [
                py, "-m", "cluster", "run", "--handler", f"examples.hello:{fun}", "--port",
                str(port), "--workers", "1", *quiet], port, env={"CLUSTER_PURE_PYTHON": "1"})
    if baseline:
        for label, fun in (("e: baseline, sync fun", "fun"), ("f: baseline, async fun", "afun")):
            port = free_port()
            chosen[label] = Server(f"baseline-{fun}", [
                py, "-m", "cluster", "run", "--handler", f"examples.hello:{fun}", "--port",
                str(port), "--workers", "1", *quiet], port, cwd=Path(baseline))
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    wrk_arguments(parser)
    parser.add_argument("--chart", default="",
                        help="also draw req/s and CPU per request per server to this file "
                             "(.svg or .png; needs matplotlib)")
    parser.add_argument("--baseline", default="",
                        help="also run (a) and (d) from this other checkout, in turns")
    parser.add_argument("--pure-too", action="store_true",
                        help="also run (a) and (d) on pure Python, in turns")
    parser.add_argument("--insecure-too", action="store_true",
                        help="also run (a) with --insecure: what CURVE costs")
    args = parser.parse_args()
    med = compare_in_turns(servers(args.baseline, args.insecure_too, args.pure_too), args)
    a, b, c, d = list(med.values())[:4]
    print("\n| ratio | value | target |\n|---|---:|---:|")
    print(f"| req/s a/b (cluster sync / uvicorn) | {a.rps / b.rps:.2f} | ≥ 1.0 |")
    print(f"| req/s d/b (cluster async / uvicorn) | {d.rps / b.rps:.2f} | ≥ 1.0 |")
    print(f"| CPU per request a/b | {a.cpu_total / b.cpu_total:.2f} | ≤ 1.0 |")
    print(f"| CPU per request d/b | {d.cpu_total / b.cpu_total:.2f} | ≤ 1.0 |")
    print(f"| CPU per request a/d (sync over async) | {a.cpu_total / d.cpu_total:.2f} | ≤ 1.15 |")
    print(f"| p99 a/b | {a.p99_ms / b.p99_ms:.2f} | ≤ 1.0 |")
    print(f"| p99 d/b | {d.p99_ms / b.p99_ms:.2f} | ≤ 1.0 |")
    print(f"| req/s a/c (cluster / gateway alone) | {a.rps / c.rps:.2f} | |")
    if args.insecure_too:
        g = med["g: cluster 1 gw + 1 worker (sync fun), --insecure"]
        print(f"| req/s a/g (CURVE / --insecure) | {a.rps / g.rps:.2f} | ≥ 0.95 |")
        print(f"| CPU per request a/g (CURVE / --insecure) | {a.cpu_total / g.cpu_total:.2f} | |")
    if args.pure_too:
        h, i = [v for k, v in med.items() if k.startswith(("h:", "i:"))]
        print(f"| CPU per request h/b (pure sync / uvicorn) | {h.cpu_total / b.cpu_total:.2f} | |")
        print(f"| CPU per request a/h (sync, compiled / pure) | {a.cpu_total / h.cpu_total:.2f} "
              "| |")
        print(f"| CPU per request d/i (async, compiled / pure) | "
              f"{d.cpu_total / i.cpu_total:.2f} | |")
        print(f"| req/s a/h (sync, compiled / pure) | {a.rps / h.rps:.2f} | |")
    if args.baseline:
        e, f = [v for k, v in med.items() if k.startswith(("e:", "f:"))]
        print(f"| CPU per request a/e (sync, this checkout / baseline) | "
              f"{a.cpu_total / e.cpu_total:.2f} | |")
        print(f"| CPU per request d/f (async, this checkout / baseline) | "
              f"{d.cpu_total / f.cpu_total:.2f} | |")
    if args.chart:
        from loadtests.bench.chart import draw
        draw(med, args.chart, f"HTTP hello, wrk -c{args.connections}, {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
