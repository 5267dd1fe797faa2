"""Gateway memory per idle WebSocket connection.

    .venv/bin/python -m loadtests.bench.ws_memory [--connections 10000] [--peers] [--pure-too]

Starts a coordinator, one gateway and one worker (examples/chat.py's echo-free
room handler is not needed: tests/apps/autobahn_echo.py accepts everything), opens
N WebSocket connections from one client process, and reports the gateway's resident
memory (VmRSS) before and after, per connection. Deflate is negotiated, as browsers
do, since its state is part of what a connection costs. With --peers, the same
connections to a `websockets` server and to uvicorn, in turn (loadtests/bench/ws_peers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from cluster.plumbing.child import read_ready
from loadtests.bench.servers import ROOT, bench_keys, free_port

PY = sys.executable


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start(role: str, *args: str,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([PY, "-m", "cluster", role, *args, "--log-level", "warning",
                             "--ready-fd", str(write_fd), "--keys", bench_keys()], cwd=ROOT,
                            pass_fds=(write_fd,), stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
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


def tree_rss_kib(pid: int) -> int:
    """The resident memory of a process and its children (uvicorn's workers)."""
    total = rss_kib(pid)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        total += tree_rss_kib(int(child))
    return total


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import socket
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)  # poll: the server is starting
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def measure(pid: int, port: int, count: int, deflate: bool) -> tuple[int, int, int]:
    """(connections opened, RSS before, RSS with them open), in KiB."""
    before = tree_rss_kib(pid)

    async def run() -> tuple[int, int]:
        writers = await open_many(port, count, deflate)
        await asyncio.sleep(1.0)  # let the server settle before measuring
        after = tree_rss_kib(pid)
        for w in writers:
            w.close()
        return len(writers), after

    opened, after = asyncio.run(run())
    return opened, before, after


def cluster_gateway(count: int, deflate: bool, env: dict[str, str]) -> tuple[int, int, int]:
    coord_port = free_port()
    endpoint = f"tcp://127.0.0.1:{coord_port}"
    procs = []
    try:
        coord, _ = start("coordinator", "--coordinator-bind", endpoint, env=env)
        procs.append(coord)
        gw, info = start("gateway", "--port", "0", "--coordinator", endpoint, env=env)
        procs.append(gw)
        worker, _ = start("worker", "--coordinator", endpoint, "--handler",
                          "tests.apps.autobahn_echo:echo", env=env)
        procs.append(worker)
        return measure(gw.pid, int(info["port"]), count, deflate)
    finally:
        stop(procs)


def peer(argv: list[str], port: int, count: int, deflate: bool) -> tuple[int, int, int]:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        return measure(proc.pid, port, count, deflate)
    finally:
        stop([proc])


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--no-deflate", action="store_true",
                        help="clients do not offer permessage-deflate")
    parser.add_argument("--peers", action="store_true",
                        help="also a websockets server and uvicorn (1 worker, its default "
                             "WebSocket implementation) with the same connections")
    parser.add_argument("--pure-too", action="store_true",
                        help="also the gateway on pure Python (CLUSTER_PURE_PYTHON=1)")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    deflate = not args.no_deflate
    runs: dict[str, Callable[[], tuple[int, int, int]]] = {
        "cluster gateway": lambda: cluster_gateway(args.connections, deflate, {})}
    if args.pure_too:
        runs["cluster gateway, pure Python"] = lambda: cluster_gateway(
            args.connections, deflate, {"CLUSTER_PURE_PYTHON": "1"})
    if args.peers:
        ws_port, uv_port = free_port(), free_port()
        runs["websockets server"] = lambda: peer(
            [PY, "-m", "loadtests.bench.ws_peers", str(ws_port)], ws_port, args.connections,
            deflate)
        runs["uvicorn --workers 1"] = lambda: peer(
            [str(Path(PY).parent / "uvicorn"), "loadtests.bench.ws_peers:app", "--port",
             str(uv_port), "--workers", "1", "--http", "httptools", "--loop", "uvloop",
             "--log-level", "warning", "--no-access-log"], uv_port, args.connections,
            deflate)
    mode = "deflate offered" if deflate else "without deflate"
    print(f"| server ({args.connections:,} idle connections, {mode}) | RSS | per connection |")
    print("|---|---|---:|")
    for name, run in runs.items():
        opened, before, after = run()
        print(f"| {name} | {before / 1024:.1f} → {after / 1024:.1f} MiB | "
              f"{(after - before) / opened:.1f} KiB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
