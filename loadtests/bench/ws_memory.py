"""Gateway memory per idle WebSocket connection.

    .venv/bin/python -m loadtests.bench.ws_memory [--connections 10000]

Starts a coordinator, one gateway and one worker (examples/chat.py's echo-free
room handler is not needed: tests/apps/autobahn_echo.py accepts everything), opens
N WebSocket connections from one client process, and reports the gateway's resident
memory (VmRSS) before and after, per connection. Deflate is negotiated, as browsers
do, since its state is part of what a connection costs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import subprocess
import sys

from cluster.plumbing.child import read_ready
from loadtests.bench.servers import ROOT, bench_keys, free_port

PY = sys.executable


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start(role: str, *args: str) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([PY, "-m", "cluster", role, *args, "--log-level", "warning",
                             "--ready-fd", str(write_fd), "--keys", bench_keys()], cwd=ROOT,
                            pass_fds=(write_fd,), stderr=subprocess.DEVNULL)
    os.close(write_fd)
    info = read_ready(read_fd, proc, 30, role)
    os.close(read_fd)
    return proc, info


async def open_many(port: int, count: int, deflate: bool) -> list[asyncio.StreamWriter]:
    writers = []
    offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    request = ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n" + offer + "\r\n")
    sem = asyncio.Semaphore(200)

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(request.format(key=key).encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(head[:60])
            writers.append(writer)

    await asyncio.gather(*(one() for _ in range(count)))
    return writers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--no-deflate", action="store_true",
                        help="clients do not offer permessage-deflate")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    coord_port = free_port()
    endpoint = f"tcp://127.0.0.1:{coord_port}"
    procs = []
    try:
        coord, _ = start("coordinator", "--coordinator-bind", endpoint)
        procs.append(coord)
        gw, info = start("gateway", "--port", "0", "--coordinator", endpoint)
        procs.append(gw)
        worker, _ = start("worker", "--coordinator", endpoint, "--handler",
                          "tests.apps.autobahn_echo:echo")
        procs.append(worker)
        port = int(info["port"])
        before = rss_kib(gw.pid)

        async def run() -> tuple[int, int]:
            writers = await open_many(port, args.connections, not args.no_deflate)
            await asyncio.sleep(1.0)  # let the gateway settle before measuring
            after = rss_kib(gw.pid)
            for w in writers:
                w.close()
            return len(writers), after

        opened, after = asyncio.run(run())
        per = (after - before) / opened
        mode = "without deflate" if args.no_deflate else "deflate negotiated"
        print(f"{opened} idle WebSocket connections ({mode}): gateway RSS "
              f"{before / 1024:.1f} MiB -> {after / 1024:.1f} MiB, {per:.1f} KiB per connection")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
