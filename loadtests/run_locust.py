"""Start the cluster on the demo app, load it with locust headless, stop it.

    .venv/bin/python -m loadtests.run_locust [--seconds 30] [--users 40] [--out reports]

`cluster run --handler examples.demo:app --gateways 2 --workers 2` on free ports,
then locust (loadtests/locustfile.py) against the first gateway, chat users spread
over both, for a bounded time; HTML and CSV reports go to --out. The exit status is
locust's: non-zero if any request failed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def start_cluster() -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [str(BIN / "cluster"), "run", "--handler", "examples.demo:app", "--gateways", "2",
         "--workers", "2", "--port", "0", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # the banner: "cluster: ... on http://..., http://..."
        if not line:
            break
        urls = re.findall(r"http://[\d.]+:\d+(?![\d/])", line)
        if urls:
            return proc, urls
    stop(proc)
    sys.exit("cluster run did not start")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--out", default="reports")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    proc, urls = start_cluster()
    try:
        locust = subprocess.run(
            [str(BIN / "locust"), "-f", str(ROOT / "loadtests" / "locustfile.py"),
             "--headless", "--users", str(args.users),
             "--spawn-rate", str(max(1, args.users)), "--run-time", f"{args.seconds}s",
             "--host", urls[0], "--html", str(out / "locust.html"),
             "--csv", str(out / "locust"), "--only-summary", "--stop-timeout", "5"],
            cwd=ROOT, env={**os.environ, "LOAD_GATEWAYS": ",".join(urls)},
            timeout=args.seconds + 120)
        return locust.returncode
    finally:
        stop(proc)


if __name__ == "__main__":
    sys.exit(main())
