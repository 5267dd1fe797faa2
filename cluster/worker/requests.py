"""The runner of native handlers (an App, or a function): an HTTP request's handler
runs on the loop, on a pool thread, or inline, and its answer goes back whole or
streamed under the gateway's flow control; WebSocket events go to `WsEvents`.
Admission under --concurrency is the runner's (runner.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any

from cluster.deferred import DEFER
from cluster.errors import StateUnavailable
from cluster.plumbing import wire
from cluster.plumbing.config import WorkerConfig
from cluster.state import Backend
from cluster.worker import event_streams
from cluster.worker.adapters import Adapter, Invocation, settle
from cluster.worker.messages import (
    ReplyLink,
    StreamEnvelopes,
    build_request,
    log_failure,
    normalize,
    response,
    server_error,
)
from cluster.worker.outcomes import HandlerOutcomes
from cluster.worker.runner import Runner
from cluster.worker.threadpool import Emitter, ThreadPool
from cluster.worker.ws_events import WsEvents

log = logging.getLogger("cluster.worker")


class StreamHandOff:
    """A streamed body a sync handler returned: a pool thread hands it to the loop,
    which sends every stream (`_stream`)."""

    __slots__ = ("body", "link", "req", "rid", "stream")

    def __init__(self, link: ReplyLink, rid: int, req: dict[str, Any],
                 stream: StreamEnvelopes, body: Any) -> None:
        self.link = link
        self.rid = rid
        self.req = req
        self.stream = stream
        self.body = body


class Drawn:
    """A part a pool thread drew from a sync generator (or what it raised; `item` is
    END after the last part), for the loop that waits for it."""

    __slots__ = ("error", "future", "item")

    def __init__(self, future: asyncio.Future[Any], item: Any,
                 error: Exception | None) -> None:
        self.future = future
        self.item = item
        self.error = error


END = object()  # what `Drawn.item` is once a generator has no more parts

Outgoing = tuple["ReplyLink", dict[str, Any]] | StreamHandOff | Drawn


class DrawnChunks:
    """A sync generator as an async iterator: each part is drawn on a pool thread (its
    code may block between parts) while the loop waits, so the loop sends a sync
    stream as it sends an async one. A class, not an async generator: mypyc compiles
    this module, and it has no async generators."""

    __slots__ = ("items", "loop", "pool")

    def __init__(self, items: Any, pool: ThreadPool[Outgoing],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.items = iter(items)
        self.pool = pool
        self.loop = loop

    def __aiter__(self) -> DrawnChunks:
        return self

    async def __anext__(self) -> Any:
        future: asyncio.Future[Any] = self.loop.create_future()
        self.pool.submit(partial(_draw, self.items, future))
        item = await future
        if item is END:
            raise StopAsyncIteration
        return item


def _draw(items: Any, future: asyncio.Future[Any], out: Emitter[Outgoing]) -> None:
    """On a pool thread: the generator's next part, handed to the loop."""
    try:
        out.emit(Drawn(future, next(items, END), None))
    except Exception as exc:
        out.emit(Drawn(future, None, exc))


class NativeRunner(Runner):
    def __init__(self, loop: asyncio.AbstractEventLoop, config: WorkerConfig,
                 outcomes: HandlerOutcomes, state: Backend, adapter: Adapter) -> None:
        super().__init__(loop, config, outcomes)
        self.state = state
        self.adapter = adapter
        # Up to every request this worker may hold, when handlers wait on the cluster.
        self.pool: ThreadPool[Outgoing] = ThreadPool(
            loop, config.threads, self, ceiling=config.concurrency + config.prefetch)
        self.ws = WsEvents(loop, state, adapter, self.ws_counts)

    def ws_event(self, link: ReplyLink, env: dict[str, Any]) -> None:
        self.ws.event(link, env)

    def close(self, timeout: float) -> None:
        self.pool.shutdown(timeout=timeout)

    def start(self, link: ReplyLink, env: dict[str, Any]) -> None:
        rid: int = env["id"]
        try:
            req = build_request(env, link.gateway_id)
            inv = self.adapter.prepare(req)
        except Exception:
            log.exception("request %s/%s could not be prepared", link.gateway_id, rid)
            self.send(link, server_error(rid, f"{link.gateway_id}/{rid}"))
            return
        if inv.inline:
            self._run_sync(link, rid, req, inv, self)
        elif inv.is_async:
            self.loop.create_task(self._run_async(link, rid, req, inv))
        else:
            self.pool.submit(partial(self._run_sync, link, rid, req, inv))

    def _run_sync(self, link: ReplyLink, rid: int, req: dict[str, Any], inv: Invocation,
                  out: Emitter[Outgoing]) -> None:
        """Runs in a pool thread, its results to the pool (or inline for ready answers,
        to this runner's own `emit`)."""
        began = time.perf_counter()
        try:
            msg, ops = settle(inv, inv.fn(*inv.args, **inv.kwargs))
            if ops:
                self.state.call(ops)  # the answer waits until the writes are durable
            answer, body = self._answer(rid, req, msg, inv.route, began)
        except Exception as exc:
            out.emit((link, self._failure(rid, req, exc, inv.route, began)))
            return
        if isinstance(answer, StreamEnvelopes):
            out.emit(StreamHandOff(link, rid, req, answer, body))  # the loop sends streams
        else:
            out.emit((link, answer))

    async def _run_async(self, link: ReplyLink, rid: int, req: dict[str, Any],
                         inv: Invocation) -> None:
        began = time.perf_counter()
        try:
            msg, ops = settle(inv, await inv.fn(*inv.args, **inv.kwargs))
            if ops:
                await self.state.acall(ops)
            out, body = self._answer(rid, req, msg, inv.route, began)
        except Exception as exc:
            self.send(link, self._failure(rid, req, exc, inv.route, began))
            return
        if isinstance(out, StreamEnvelopes):
            await self._stream(link, rid, req, out, body)
        else:
            self.send(link, out)

    def _answer(self, rid: int, req: dict[str, Any], msg: Any, route: str,
                began: float) -> tuple[dict[str, Any] | StreamEnvelopes, Any]:
        """What a handler's settled answer becomes, for sync and async handlers alike:
        an envelope to send (DEFERRED, or a whole response), or a stream's envelopes
        with the body to draw them from. Records the route's time."""
        if msg is DEFER:
            self.outcomes.record((route, "deferred"), time.perf_counter() - began)
            return wire.envelope(wire.DEFERRED, id=rid), None
        if type(msg) is dict and "events" in msg:  # a stream of Server-Sent Events
            self.outcomes.record((route, 200), time.perf_counter() - began)
            return event_streams.envelope(rid, req, msg), None
        status, headers, body = normalize(msg)
        out: dict[str, Any] | StreamEnvelopes = \
            self._whole(rid, req, status, headers, body) if isinstance(body, bytes) \
            else StreamEnvelopes(rid, status, headers)
        self.outcomes.record((route, status), time.perf_counter() - began)
        return out, body

    def _whole(self, rid: int, req: dict[str, Any], status: int, headers: list[list[str]],
               body: bytes) -> dict[str, Any]:
        """A whole response's envelope (see `messages.response`)."""
        return response(rid, status, headers, body, request_headers=req["raw_headers"],
                        gzip_min_size=self.config.gzip_min_size)

    async def _stream(self, link: ReplyLink, rid: int, req: dict[str, Any],
                      stream: StreamEnvelopes, body: Any) -> None:
        """The one loop that sends a streamed body, under the gateway's flow window:
        an async generator's parts as it yields them, a sync one's as a pool thread
        draws them (DrawnChunks)."""
        window = self.streams.open(link.gateway_id, rid)
        chunks = body if hasattr(body, "__anext__") else DrawnChunks(body, self.pool, self.loop)
        try:
            async for chunk in chunks:
                env = stream.chunk(chunk)
                window.sent(len(env["body"]))
                self.send(link, env)
                if not await window.pace(self.config.stream_stall_timeout):
                    self._stalled(req)
                if window.gone:
                    break
        except Exception as exc:
            log_failure(req, exc)
            self.send(link, stream.failed(req["id"]))
            return
        finally:
            self.streams.close(link.gateway_id, rid)
        if window.gone:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()  # run the generator's finally
            else:
                getattr(body, "close", lambda: None)()
            self.send(link, stream.failed(req["id"]))
            return
        self.send(link, stream.end())

    def _stalled(self, req: dict[str, Any]) -> None:
        log.warning("request %s: the client took nothing of the stream for %.0fs; cut",
                    req["id"], self.config.stream_stall_timeout,
                    extra={"request_id": req["id"]})

    def _failure(self, rid: int, req: dict[str, Any], exc: Exception, route: str,
                 began: float) -> dict[str, Any]:
        """The response for a handler that failed: 503 when the shared state is out
        of reach (the client may retry), 500 for everything else."""
        self.outcomes.failed(route, exc)
        if isinstance(exc, StateUnavailable):
            log.warning("request %s: shared state unavailable: %s; 503", req["id"], exc,
                        extra={"request_id": req["id"]})
            self.outcomes.record((route, 503), time.perf_counter() - began)
            return response(rid, 503, [["content-type", "text/plain; charset=utf-8"],
                                       ["retry-after", "1"]],
                            b"Service Unavailable: shared state unreachable\n")
        log_failure(req, exc)
        self.outcomes.record((route, 500), time.perf_counter() - began)
        return server_error(rid, req["id"])

    def on_results(self, batch: list[Outgoing]) -> None:
        """What pool threads produced, on the loop: envelopes to send, streams a sync
        handler returned (the loop sends them), and parts drawn for those streams."""
        for item in batch:
            if isinstance(item, Drawn):
                if not item.future.done():
                    if item.error is not None:
                        item.future.set_exception(item.error)
                    else:
                        item.future.set_result(item.item)
            elif isinstance(item, StreamHandOff):
                self.loop.create_task(self._stream(
                    item.link, item.rid, item.req, item.stream, item.body))
            else:
                self.send(item[0], item[1])

    def emit(self, item: Outgoing) -> None:
        """An inline answer's result (an `Emitter`, as the pool is): on the loop already."""
        self.on_results([item])
