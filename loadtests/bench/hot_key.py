"""A hot key: one counter that every worker increments, on the embedded coordinator and
on etcd (3 members on 127.0.0.1), in one run, in turns.

    .venv/bin/python -m loadtests.bench.hot_key [--rounds 3] [--seconds 10]
        [--connections 64] [--workers 2] [--async] [--handler-threads N]
        [--etcd-unsafe-no-fsync] [--coordinator-fsync always|batch] [--baseline DIR]

Each server is `cluster run` with one gateway and `--workers` workers running
loadtests/bench/hot_key_app.py (each request: `state.incr("hits")`, acknowledged once
durable). wrk drives the gateway. On etcd it runs with the state sequencer (a gateway
commits every worker's writes together; the default) and without it
(`--no-state-sequencer`: each worker commits its own by compare-and-set). The CPU per
request counts every process of the server, etcd's members included.

With --baseline DIR (another checkout, its compiled modules built in place:
`python setup.py build_ext --inplace` there), two more servers run that checkout, on
etcd with the sequencer and on the coordinator, in the same turns: a change's effect
on both sides of the ratio, beside the noise.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from loadtests.bench.servers import BIN, Server, compare_in_turns, free_port, wrk_arguments

APP = "loadtests.bench.hot_key_app:"


def servers(workers: int, app: str, threads: int, fsync: bool,
            coordinator_log: list[str], baseline: str = "") -> dict[str, Server]:
    py = str(BIN / "python")
    run = [py, "-m", "cluster", "run", "--handler", app, "--workers", str(workers),
           "--threads", str(threads), "--log-level", "warning"]
    etcd = [py, "-m", "loadtests.bench.on_etcd", *([] if fsync else ["--unsafe-no-fsync"]),
            "--", *run, "--state-backend", "{etcd}"]
    a, b, c, d, e = (free_port() for _ in range(5))
    chosen = {
        "a: coordinator": Server("coordinator", [*run, *coordinator_log, "--port", str(a)], a),
        "b: etcd, sequencer": Server("etcd-sequencer", [*etcd, "--port", str(b)], b),
        "c: etcd, no sequencer": Server("etcd-cas", [*etcd, "--port", str(c),
                                                      "--no-state-sequencer"], c),
    }
    if baseline:  # `python -m` runs the checkout it starts in
        chosen["d: baseline, etcd, sequencer"] = Server(
            "baseline-etcd-sequencer", [*etcd, "--port", str(d)], d, cwd=Path(baseline))
        # A change to the worker moves the coordinator too: its ratio needs both.
        chosen["e: baseline, coordinator"] = Server(
            "baseline-coordinator", [*run, *coordinator_log, "--port", str(e)], e,
            cwd=Path(baseline))
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    wrk_arguments(parser)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--async", dest="coroutine", action="store_true",
                        help="the handler as a coroutine (await state.aincr): "
                             "--concurrency increments in flight per worker, not --threads")
    parser.add_argument("--etcd-unsafe-no-fsync", action="store_true",
                        help="etcd's members acknowledge without fsync, as the embedded "
                             "coordinator without --data-dir does: what fsync costs")
    parser.add_argument("--handler-threads", type=int, default=8,
                        help="each worker's --threads: a sync handler holds its thread "
                             "while its increment is made durable")
    parser.add_argument("--coordinator-fsync", choices=("always", "batch"),
                        help="the coordinator keeps its log in a data directory, fsynced "
                             "so (always: before each acknowledgement, as etcd does)")
    parser.add_argument("--baseline", default="",
                        help="another checkout, run on etcd with the sequencer in the "
                             "same turns")
    args = parser.parse_args()
    app = APP + ("async_app" if args.coroutine else "app")
    data_dir = tempfile.mkdtemp(prefix="bench-hot-key-") if args.coordinator_fsync else ""
    coordinator_log = ["--data-dir", data_dir, "--fsync", args.coordinator_fsync] \
        if args.coordinator_fsync else []
    try:
        med = compare_in_turns(servers(args.workers, app, args.handler_threads,
                                       not args.etcd_unsafe_no_fsync, coordinator_log,
                                       args.baseline), args)
    finally:
        if data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    a, b, c, *base = med.values()
    print("\n| ratio | value | target |\n|---|---:|---:|")
    print(f"| increments/s, etcd with the sequencer / coordinator | {b.rps / a.rps:.2f} "
          f"| ≥ 0.5 |")
    print(f"| increments/s, etcd without it / coordinator | {c.rps / a.rps:.2f} | |")
    print(f"| increments/s, sequencer / without | {b.rps / c.rps:.2f} | |")
    print(f"| CPU per increment, etcd with the sequencer / coordinator | "
          f"{b.cpu_total / a.cpu_total:.2f} | |")
    if base:
        print(f"| increments/s, this checkout / baseline (etcd, sequencer) | "
              f"{b.rps / base[0].rps:.2f} | |")
        print(f"| increments/s, coordinator, this checkout / baseline | "
              f"{a.rps / base[1].rps:.2f} | |")
        print(f"| increments/s, baseline: etcd with the sequencer / coordinator | "
              f"{base[0].rps / base[1].rps:.2f} | |")
        print(f"| CPU per increment, this checkout / baseline | "
              f"{b.cpu_total / base[0].cpu_total:.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
