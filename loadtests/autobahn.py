"""Autobahn TestSuite cases (through kosoku) against an echo handler on the cluster.

    .venv/bin/python -m loadtests.autobahn [SECTION ...]      (default: 12 13)

Starts `cluster run` on a free port with keepalive pings off (kosoku abandons a case
that receives an unsolicited ping), runs the sections, prints the counts of each
behaviour and exits 1 if any case FAILED. `make conformance` runs it for CI;
sections 1-7 and 10 already run in `make test`.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def main(argv: list[str]) -> int:
    sections = argv or ["12", "13"]
    kosoku = shutil.which("kosoku", path=str(BIN))
    if kosoku is None:
        print("kosoku is missing: make test installs it", file=sys.stderr)
        return 2
    server = subprocess.Popen(
        [str(BIN / "python"), "-m", "cluster", "run", "--handler",
         "tests.apps.autobahn_echo:echo", "--port", "0", "--workers", "1",
         "--ws-max-size", "20000000", "--max-frame", "100000000",
         "--ws-ping-interval", "3600", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()  # printed once every gateway accepts
        match = re.search(r"http://127\.0\.0\.1:(\d+)", banner)
        if match is None:
            print(f"cluster did not start: {banner!r}", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory(prefix="autobahn-") as out:
            args = [kosoku, "-m", "fuzzingclient", "-p", "4", "-o", out]
            for section in sections:
                args += ["-i", f"{section}.*"]
            started = time.monotonic()
            subprocess.run([*args, f"127.0.0.1:{match.group(1)}"], check=False,
                           stdout=subprocess.DEVNULL, timeout=1800)
            index = json.loads((Path(out) / "index.json").read_text())
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        if server.stdout is not None:
            server.stdout.close()
    results = {case: r["behavior"] for agent in index.values() for case, r in agent.items()}
    counts = collections.Counter(results.values())
    failed = sorted(c for c, b in results.items() if b == "FAILED")
    print(f"Autobahn sections {', '.join(sections)}: {len(results)} cases in "
          f"{time.monotonic() - started:.0f} s: " +
          ", ".join(f"{n} {b}" for b, n in sorted(counts.items())))
    if failed:
        print(f"FAILED: {' '.join(failed)}")
    # The plain closing line CI reads (OK, NON-STRICT and INFORMATIONAL all pass).
    print(f"autobahn: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
