"""ASGI benchmark: the same Starlette app on the cluster and on uvicorn, in one run.

    .venv/bin/python -m loadtests.bench.asgi [--rounds 3] [--seconds 10] [--connections 64]

(a) `cluster run` with 1 gateway + 1 worker running loadtests/bench/starlette_app.py
(b) uvicorn --workers 2 --http httptools --loop uvloop on the same app
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
    args = parser.parse_args()
    a, b = free_port(), free_port()
    med = compare_in_turns({
        "a: cluster 1 gw + 1 worker (Starlette)": Server("cluster", [
            str(BIN / "python"), "-m", "cluster", "run", "--handler", APP, "--port", str(a),
            "--workers", "1", "--log-level", "warning"], a),
        "b: uvicorn --workers 2 (Starlette)": Server("uvicorn", [
            str(BIN / "uvicorn"), APP, "--port", str(b), "--workers", "2", "--http",
            "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning"], b),
    }, args)
    a, b = med.values()
    print(f"\n| ratio | value | target |\n|---|---:|---:|\n| req/s a/b (cluster / uvicorn) | "
          f"{a.rps / b.rps:.2f} | ≥ 1.0 |\n| CPU per request a/b | "
          f"{a.cpu_total / b.cpu_total:.2f} | ≤ 1.0 |")
    if args.chart:
        from loadtests.bench.chart import draw
        draw(med, args.chart, f"Starlette JSON route, wrk -c{args.connections}, "
                              f"{args.rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
