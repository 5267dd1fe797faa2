"""ASGI benchmark: the same Starlette app on the cluster and on uvicorn, in one run.

    .venv/bin/python -m loadtests.bench.asgi [--rounds 3] [--seconds 10] [--connections 64]

(a) `cluster run` with 1 gateway + 1 worker running loadtests/bench/starlette_app.py
(b) uvicorn --workers 2 --http httptools --loop uvloop on the same app
(c) with --pure-too: (a) with CLUSTER_PURE_PYTHON=1, without its compiled modules
"""

from __future__ import annotations

import argparse
import sys

from loadtests.bench.servers import BIN, Server, compare_in_turns, free_port, wrk_arguments

APP = "loadtests.bench.starlette_app:app"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    wrk_arguments(parser)
    parser.add_argument("--chart", default="",
                        help="also draw req/s and CPU per request per server to this file "
                             "(.svg or .png; needs matplotlib)")
    parser.add_argument("--pure-too", action="store_true",
                        help="also run (a) on pure Python, in turns")
    args = parser.parse_args()
    a, b, c = free_port(), free_port(), free_port()
    chosen = {
        "a: cluster 1 gw + 1 worker (Starlette)": Server("cluster", [
            str(BIN / "python"), "-m", "cluster", "run", "--handler", APP, "--port", str(a),
            "--workers", "1", "--log-level", "warning"], a),
        "b: uvicorn --workers 2 (Starlette)": Server("uvicorn", [
            str(BIN / "uvicorn"), APP, "--port", str(b), "--workers", "2", "--http",
            "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning"], b),
    }
    if args.pure_too:
        chosen["c: cluster on pure Python (Starlette)"] = Server("cluster-pure", [
            str(BIN / "python"), "-m", "cluster", "run", "--handler", APP, "--port", str(c),
            "--workers", "1", "--log-level", "warning"], c, env={"CLUSTER_PURE_PYTHON": "1"})
    med = compare_in_turns(chosen, args)
    first, uvicorn = list(med.values())[:2]
    print(f"\n| ratio | value | target |\n|---|---:|---:|\n| req/s a/b (cluster / uvicorn) | "
          f"{first.rps / uvicorn.rps:.2f} | ≥ 1.1 |\n| CPU per request a/b | "
          f"{first.cpu_total / uvicorn.cpu_total:.2f} | ≤ 1.0 |")
    if args.pure_too:
        pure = med["c: cluster on pure Python (Starlette)"]
        print(f"| req/s c/b (pure / uvicorn) | {pure.rps / uvicorn.rps:.2f} | |\n"
              f"| CPU per request a/c (compiled / pure) | "
              f"{first.cpu_total / pure.cpu_total:.2f} | |")
    if args.chart:
        from loadtests.bench.chart import draw
        draw(med, args.chart, f"Starlette JSON route, wrk -c{args.connections}, "
                              f"{args.rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
