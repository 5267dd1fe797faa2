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
import sys

from loadtests.bench.servers import BIN, Server, compare_in_turns, free_port, wrk_arguments


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
    wrk_arguments(parser)
    args = parser.parse_args()
    med = compare_in_turns(servers(), args)
    names = list(med)
    a, b, c, d = (med[n][0] for n in names)
    print(f"\n| ratio | value |\n|---|---:|\n| a/b (cluster / uvicorn) | {a / b:.2f} |"
          f"\n| a/c (cluster / gateway alone) | {a / c:.2f} |"
          f"\n| d/b (async handler / uvicorn) | {d / b:.2f} |"
          f"\n| p99 a/b | {med[names[0]][2] / med[names[1]][2]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
