"""Run a command beside three fresh etcd members on 127.0.0.1, all in this process's
session (so a benchmark counts etcd's CPU with the server's, and stops them with it).

    python -m loadtests.bench.on_etcd [--unsafe-no-fsync] -- cluster run --handler ... \
        --state-backend {etcd}

(the URL names the key prefix /bench/)

`{etcd}` in the command becomes the etcd:// URL. The members' data is removed at the end.
`--unsafe-no-fsync` starts the members with etcd's flag of that name: a write is
acknowledged once a quorum has it in memory and in the page cache, not on disk (a
measurement of what fsync costs; never how to run it).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtests.bench.state import start_etcd


def main() -> int:
    argv = sys.argv[1:]
    fsync = "--unsafe-no-fsync" not in argv[:1]
    if not fsync:
        argv = argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    data = Path(tempfile.mkdtemp(prefix="bench-etcd-"))
    members, url = start_etcd(data, fsync=fsync)
    command = subprocess.Popen([arg.replace("{etcd}", url) for arg in argv])
    # The benchmark stops the whole session with SIGTERM: wait for the command to end.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        return command.wait()
    finally:
        for member in members:
            member.terminate()
        for member in members:
            member.wait(20)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
