"""In-process microbenchmarks of one request's path through the gateway and the worker.

    .venv/bin/python -m loadtests.bench.micro [gateway|worker|all] [--requests 200000]

No sockets, so a change on the hot path is measured in seconds, without wrk:

- **gateway**: the bytes wrk sends go into an `HttpConnection` on a transport that
  only counts what is written; each request is dispatched to a worker link, its
  REQUEST envelopes packed into frames of 32 (as the ZeroMQ pump does), and the
  matching RESPONSE frames decoded and fed back through the dispatcher, so each
  response is framed and written. Everything the gateway's Python does per request
  except the ZeroMQ send/receive calls and the kernel's socket work.
- **worker**: frames of 32 REQUEST envelopes (as a gateway sends them) are decoded
  and handed to a `Worker` running `examples.hello` (the sync `fun` on its thread
  pool, then the async `afun` on its loop) and then the ASGI benchmark's Starlette
  app; the RESPONSE envelopes it posts are packed into frames. Everything the
  worker's Python does per request except the ZeroMQ calls.

Each figure is CPU µs per request (this process, all threads), the median of
`--repeat` runs, with the range.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import uvloop
import zmq

from cluster.gateway.dispatch import Dispatcher
from cluster.gateway.http_connection import ConnectionContext, HttpConnection
from cluster.gateway.http_core import HttpLimits
from cluster.gateway.ws_core import WsOptions
from cluster.plumbing import wire
from cluster.plumbing.config import WorkerConfig
from cluster.worker.loader import load_handler
from cluster.worker.server import Worker

BATCH = 32
WORKER_HANDLERS = {"sync fun": "examples.hello:fun", "async afun": "examples.hello:afun",
                   "Starlette (ASGI)": "loadtests.bench.starlette_app:app"}
WRK_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"


class CountingTransport:
    """What an asyncio transport offers a connection; writes are only counted."""

    def __init__(self) -> None:
        self.written = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


class FramePump:
    """Stands in for `zmqio.Pump`: the envelopes posted are packed into one frame
    per `flush`, as the real pump packs them per loop pass (each run posts `BATCH`
    between flushes, the real pump's cap)."""

    def __init__(self) -> None:
        self.outbox: list[dict[str, Any]] = []
        self.frames: list[bytes] = []

    def post(self, msg: dict[str, Any], to: bytes | None = None) -> None:
        self.outbox.append(msg)

    def flush(self) -> None:
        if self.outbox:
            self.frames.append(wire.encode(self.outbox))
            self.outbox = []


def gateway_run(requests: int) -> float:
    """CPU µs per request of the gateway's path (see the module docstring)."""
    loop = uvloop.new_event_loop()
    dispatcher = Dispatcher(loop, "gw-bench", request_timeout=30.0, peer_expiry=10.0,
                            max_queue=1024)
    pump = FramePump()
    dispatcher.pump = pump
    peer = b"wk-bench@gw-bench"  # a worker names the gateway instance it links to
    dispatcher.on_messages(peer, [{"k": wire.HELLO, "id": "wk-bench", "credit": BATCH}])
    pump.frames.clear()
    pump.outbox.clear()
    ctx = ConnectionContext(HttpLimits(), dispatcher, 10.0, 10.0, 16,
                            WsOptions(max_size=1 << 20, deflate=False, origins=()),
                            gateway_id="gw-bench")
    ctx.date = b"Sun, 22 Nov 2026 04:00:00 GMT"
    conns = []
    for _ in range(BATCH):
        conn = HttpConnection(ctx, loop)
        conn.connection_made(CountingTransport())  # type: ignore[arg-type]
        conns.append(conn)
    headers = [["content-type", "text/plain; charset=utf-8"], ["X-Worker", "wk-bench"]]
    spent = 0.0
    for _ in range(requests // BATCH):
        began = time.process_time()
        for conn in conns:
            conn.data_received(WRK_REQUEST)
        ids = [env["id"] for env in pump.outbox]
        pump.flush()
        pump.frames.clear()
        spent += time.process_time() - began
        # The worker's part, not counted: the answers' frame.
        frame = wire.encode([{"k": wire.RESPONSE, "id": rid, "status": 200,
                              "headers": headers, "body": b"hello\n", "more": False}
                             for rid in ids])
        began = time.process_time()
        dispatcher.on_messages(peer, wire.decode_frame(frame))
        spent += time.process_time() - began
    loop.close()
    return spent * 1e6 / (requests // BATCH * BATCH)


class BenchLink:
    """The link a request came on as the worker's request path sees it (a
    `messages.ReplyLink`), posting into a `FramePump`."""

    def __init__(self) -> None:
        self.gateway_id = "gw-bench"
        self.pump = FramePump()
        self.answered = 0
        self.done: asyncio.Event | None = None
        self.expect = 0

    def post(self, msg: dict[str, Any]) -> None:
        self.pump.post(msg)
        self.answered += 1
        if self.answered >= self.expect and self.done is not None:
            self.done.set()


def worker_run(requests: int, handler: str) -> float:
    """CPU µs per request of the worker's path for `handler` (pkg.module:object)."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    config = WorkerConfig(handler=handler, concurrency=64)
    worker = Worker(config, loop, ctx, load_handler(handler), "wk-bench")
    link = BenchLink()
    headers = [["host", "127.0.0.1:8000"]]
    frames = []
    next_id = 0
    for _ in range(requests // BATCH):
        envs = []
        for _ in range(BATCH):
            next_id += 1
            envs.append(wire.envelope(wire.REQUEST, id=next_id, conn=next_id % 64,
                                      method="GET", target="/", version="1.1",
                                      headers=headers, body=b"", addr=["127.0.0.1", 40000]))
        frames.append(wire.encode(envs))

    async def drive() -> float:
        link.done = asyncio.Event()
        began = time.process_time()
        for frame in frames:
            link.expect += BATCH
            link.done.clear()
            for env in wire.decode_frame(frame):  # as GatewayLink.on_messages does
                worker.runner.request(link, env)
            await link.done.wait()
            link.pump.flush()
        return time.process_time() - began

    spent = loop.run_until_complete(drive())
    worker.runner.close(timeout=1.0)
    loop.close()
    ctx.term()
    return spent * 1e6 / (len(frames) * BATCH)


def report(name: str, runs: list[float]) -> None:
    print(f"{name}: {statistics.median(runs):.2f} µs CPU per request "
          f"[{min(runs):.2f}-{max(runs):.2f}] over {len(runs)} runs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", default="all", choices=["gateway", "worker", "all"])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.which in ("gateway", "all"):
        report("gateway", [gateway_run(args.requests) for _ in range(args.repeat)])
    if args.which in ("worker", "all"):
        for name, handler in WORKER_HANDLERS.items():
            report(f"worker, {name}", [worker_run(args.requests, handler)
                                       for _ in range(args.repeat)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
