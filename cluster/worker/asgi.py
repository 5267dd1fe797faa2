"""ASGI 3 applications in a worker: HTTP, WebSocket and lifespan (seed "ASGI").

Theory of operation
-------------------
The gateway has already parsed the request; the worker builds the ASGI scope
from the request envelope and runs `app(scope, receive, send)` on its loop.

HTTP: `receive()` gives the whole body as one `http.request` (the gateway reads a
body completely, up to --max-body, before dispatching), then waits for
`http.disconnect`, which comes when the gateway reports the client gone (GONE) or
once the response is complete. `send()` is checked against the order the spec
requires; a response goes to the gateway whole, or as a stream when the app sends
`more_body`. A message out of order raises `ASGIError` in the app, is logged
naming the mistake, and the client gets 500 (or the connection is cut, if part of
the response was already sent).

WebSocket: each connection runs the app once, in its own task, fed the
connection's events in order from a queue. `websocket.accept`, `send` and `close`
become the gateway actions every other handler uses; `websocket.close` or an
`websocket.http.response` before accepting refuses the handshake (403, or the
app's status and body). An app that fails closes the connection with 1011.

Lifespan: `startup` once when the worker starts (before it takes requests) and
`shutdown` when it stops; an app that does not speak lifespan (raises on the
scope) is run without. `scope["state"]` is a shallow copy, per request, of the
state lifespan filled in.

The cluster's own features are reachable from inside an app: `push`, `broadcast`,
`join`, ... are module functions (`from cluster import push`), and
`scope["extensions"]["cluster"]` holds `state` (the shared state, as a handler's
view: use the `a*` operations, which commit at once; plain writes commit when the
app returns) and `conn` (this connection's id, which `push` reaches).

An HTTP response may become a stream of Server-Sent Events held by the gateway: send
`{"type": "cluster.event_stream", "subscribe": group, "since": [epoch, offset] or
None, "join": [groups], "retry": ms, "headers": [...]}` instead of
`http.response.start` (docs/clients.md).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import unquote

from cluster.errors import ASGIError, BadField, BadResponse, ClientDisconnected, LifespanError
from cluster.plumbing import wire
from cluster.plumbing.response_parts import abort_envelope
from cluster.state import Backend, SharedState
from cluster.worker import event_streams
from cluster.worker.flow import Streams, StreamWindow
from cluster.worker.messages import (
    ReplyLink,
    StreamEnvelopes,
    response,
    server_error,
)

log = logging.getLogger("cluster.worker.asgi")

ASGI = {"version": "3.0", "spec_version": "2.4"}
Message = dict[str, Any]
Act = Callable[[list[Any]], None]  # a WebSocket action to the gateway


class Replies(Protocol):
    """What an exchange needs of the worker's runner (`AsgiRunner` is one): the way
    back for its envelopes, and the flow windows of streamed responses."""

    streams: Streams

    def send(self, link: ReplyLink, env: dict[str, Any]) -> None: ...


def is_asgi_app(obj: Any, positional: int | None) -> bool:
    """An ASGI 3 app: a coroutine function of (scope, receive, send), or an object
    whose __call__ is one."""
    if positional != 3:
        return False
    call = obj if inspect.isfunction(obj) or inspect.ismethod(obj) else \
        getattr(obj, "__call__", None)  # noqa: B004 (an instance's async __call__)
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(obj)


def _headers(raw: Any) -> list[tuple[bytes, bytes]]:
    # The gateway sends names lower-cased already, as ASGI wants them.
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in raw
            if type(n) is str and type(v) is str]


def _str_headers(raw: Any) -> list[list[str]]:
    """ASGI (bytes, bytes) headers as the gateway's [str, str] pairs."""
    try:
        return [[bytes(n).decode("latin-1"), bytes(v).decode("latin-1")] for n, v in raw]
    except (TypeError, ValueError):
        raise ASGIError("headers must be an iterable of [bytes, bytes] pairs") from None


def _scope_base(kind: str, target: str, raw_headers: Any, scheme: str, addr: Any,
                state: dict[str, Any], extensions: dict[str, Any]) -> dict[str, Any]:
    raw_path, _, query = target.partition("?")
    return {
        "type": kind,
        "asgi": ASGI,
        "http_version": "1.1",
        "scheme": scheme,
        "path": unquote(raw_path) if "%" in raw_path else raw_path,
        "raw_path": raw_path.encode("latin-1", "replace"),
        "query_string": query.encode("latin-1", "replace"),
        "root_path": "",
        "headers": _headers(raw_headers),
        "client": [addr[0], addr[1]] if len(addr) == 2 and addr[0] else None,
        "server": None,
        "state": dict(state),
        "extensions": {"cluster": extensions},
    }


class ASGIHandler:
    kind = "asgi"

    def __init__(self, app: Any, backend: Backend) -> None:
        self.app = app
        self.backend = backend
        self.state: dict[str, Any] = {}  # what lifespan startup stored
        self.lifespan = Lifespan(app, self.state)

    def http_scope(self, env: dict[str, Any], label: str, conn: str
                   ) -> tuple[dict[str, Any], SharedState]:
        """The scope of a REQUEST envelope, built from it directly: an app reads the
        scope, so the handler dict other kinds get is never made."""
        view = SharedState(self.backend)
        scope = _scope_base("http", env["target"], env["headers"],
                            "https" if env.get("scheme") == "https" else "http", env["addr"],
                            self.state, {"state": view, "request_id": label,
                                         "conn": conn})
        scope["method"] = env["method"]
        scope["http_version"] = env["version"]
        return scope, view

    def websocket_scope(self, req: dict[str, Any], raw_headers: Any
                        ) -> tuple[dict[str, Any], SharedState]:
        view = SharedState(self.backend)
        scope = _scope_base("websocket", req["target"], raw_headers, req["scheme"],
                            req["addr"], self.state, {"state": view, "conn": req["conn"]})
        scope["subprotocols"] = list(req["subprotocols"])
        return scope, view


class HttpExchange:
    """One request's receive/send channel; turns ASGI messages into envelopes."""

    def __init__(self, rid: int, label: str, body: bytes, link: ReplyLink, replies: Replies,
                 *, stall_timeout: float,
                 request_headers: list[list[str]] | None = None,
                 gzip_min_size: int = 0) -> None:
        self.rid = rid
        # A whole response of gzip_min_size or more is gzipped if the client takes it.
        self.request_headers = request_headers or []
        self.gzip_min_size = gzip_min_size
        self.link = link  # the gateway the request came from
        self.replies = replies
        self.window: StreamWindow | None = None
        self.stall_timeout = stall_timeout
        self.label = label
        self.body = body
        self.body_given = False
        self.status: int | None = None
        self.headers: list[list[str]] = []
        self.stream: StreamEnvelopes | None = None
        self.finished = False
        self.gone = False
        self.done = asyncio.Event()  # response complete or client gone: disconnect

    async def receive(self) -> Message:
        if not self.body_given:
            self.body_given = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.done.wait()
        return {"type": "http.disconnect"}

    def client_gone(self) -> None:
        self.gone = True
        self.done.set()
        if self.window is not None:
            self.window.client_gone()

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if self.finished:
            raise ASGIError(f"{kind!r} after the response ended")
        if self.gone:
            raise ClientDisconnected("the client has gone")
        if kind == "http.response.start":
            if self.status is not None:
                raise ASGIError("http.response.start sent twice")
            status = message.get("status")
            if not isinstance(status, int) or not 100 <= status <= 599:
                raise ASGIError(f"http.response.start with status {status!r}")
            self.headers = _str_headers(message.get("headers") or [])
            self.status = status
        elif kind == "http.response.body":
            if self.status is None:
                raise ASGIError("http.response.body before http.response.start")
            body = message.get("body", b"")
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise ASGIError("http.response.body needs bytes in 'body'")
            more = bool(message.get("more_body", False))
            self._body(bytes(body), more)
            if more and self.window is None:  # flow control, once the body is streamed
                self.window = self.replies.streams.open(self.link.gateway_id, self.rid)
            window = self.window
            if more and window is not None:
                window.sent(len(body))
                if not await window.pace(self.stall_timeout):
                    log.warning("request %s: the client took nothing of the stream "
                                "for %.0fs; cut", self.label, self.stall_timeout)
                    self.client_gone()
                if window.gone:
                    self.gone = True
                    raise ClientDisconnected("the client has gone")
        elif kind == "cluster.event_stream":
            self._event_stream(message)
        else:
            raise ASGIError(f"{kind!r} is not an HTTP response message")

    def _event_stream(self, message: Message) -> None:
        """The cluster extension's answer: this response becomes a stream of
        Server-Sent Events held by the gateway (cluster/worker/event_streams.py)."""
        if self.status is not None:
            raise ASGIError("cluster.event_stream after http.response.start")
        subscribe = message.get("subscribe")
        events: dict[str, Any] = {"join": message.get("join"), "retry": message.get("retry")}
        if subscribe is not None:
            events["subscribe"] = {"group": subscribe, "since": message.get("since")}
        answer = {"events": events, "headers": _str_headers(message.get("headers") or [])}
        try:
            env = event_streams.envelope(self.rid, {"raw_headers": self.request_headers},
                                         answer)
        except (BadResponse, BadField) as exc:
            raise ASGIError(f"cluster.event_stream: {exc}") from None
        self.status = 200
        self._emit(env)
        self._finish()

    def _body(self, body: bytes, more: bool) -> None:
        assert self.status is not None
        try:
            if self.stream is None and not more:
                self._emit(response(self.rid, self.status, self.headers, body,
                                    request_headers=self.request_headers,
                                    gzip_min_size=self.gzip_min_size))
                self._finish()
                return
            if self.stream is None:
                self.stream = StreamEnvelopes(self.rid, self.status, self.headers)
        except BadField as exc:
            raise ASGIError(f"http.response.start with {exc}") from None
        if body:
            self._emit(self.stream.chunk(body))
        if not more:
            self._emit(self.stream.end())
            self._finish()

    def _emit(self, env: dict[str, Any]) -> None:
        self.replies.send(self.link, env)

    def _finish(self) -> None:
        self.finished = True
        self.done.set()

    def fail(self) -> None:
        """After an error in the app: 500 if nothing was sent, else cut the stream."""
        if self.finished:
            return
        if self.stream is not None and self.stream.started:
            self._emit(abort_envelope(self.rid))
        else:
            self._emit(server_error(self.rid, self.label))
        self._finish()


async def run_http(app: Any, scope: dict[str, Any], exchange: HttpExchange) -> int:
    """Run one request; returns the status the client got (for metrics)."""
    try:
        await app(scope, exchange.receive, exchange.send)
    except ASGIError as exc:
        answered = exchange.finished
        log.error("request %s: ASGI app error: %s%s", exchange.label, exc,
                  "" if answered else "; 500", extra={"request_id": exchange.label})
        exchange.fail()
        return exchange.status or 500 if answered else 500
    except ClientDisconnected:
        pass
    except Exception:
        if not exchange.finished:
            log.exception("request %s: ASGI app raised", exchange.label,
                          extra={"request_id": exchange.label})
            exchange.fail()
            return 500
        log.exception("request %s: ASGI app raised after its response",
                      exchange.label, extra={"request_id": exchange.label})
    if exchange.gone and not exchange.finished:
        # The gateway still needs a final envelope: it returns this worker's credit.
        exchange.fail()
        return 499  # nginx's "client closed request": nobody got an answer
    if not exchange.finished:
        log.error("request %s: ASGI app returned without completing its response; 500",
                  exchange.label, extra={"request_id": exchange.label})
        exchange.fail()
        return 500
    return exchange.status or 500


class WebSocketSession:
    """One connection's run of the app: events in through a queue, actions out."""

    def __init__(self, number: int, label: str, act: Act) -> None:
        self.number = number
        self.label = label
        self.act = act
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.queue.put_nowait({"type": "websocket.connect"})
        self.stage = "connecting"  # accepted, closed
        self.client_gone = False
        self._deny: tuple[int, list[bytes]] | None = None

    # -- from the gateway ---------------------------------------------------------
    def message(self, text: str | None, data: bytes | None) -> None:
        if text is not None:
            self.queue.put_nowait({"type": "websocket.receive", "text": text})
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": data or b""})

    def closed(self, code: int, reason: str) -> None:
        self.client_gone = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code,
                               "reason": reason})

    # -- the app's side -------------------------------------------------------------
    async def receive(self) -> Message:
        message = await self.queue.get()
        if message["type"] == "websocket.receive" and not self.client_gone:
            self.act(wire.ack(self.number))  # taken: the gateway may read more
        return message

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        n = self.number
        if self.client_gone or self.stage == "closed":
            raise ClientDisconnected(f"{kind}: the connection is closed")
        if kind == "websocket.accept":
            if self.stage != "connecting" or self._deny is not None:
                raise ASGIError("websocket.accept after the handshake was decided")
            headers = _str_headers(message.get("headers") or [])
            subprotocol = message.get("subprotocol")
            self.act(wire.accept(n, subprotocol if isinstance(subprotocol, str) else None,
                                 headers))
            self.stage = "accepted"
        elif kind == "websocket.send":
            if self.stage != "accepted":
                raise ASGIError("websocket.send before websocket.accept")
            text, data = message.get("text"), message.get("bytes")
            if isinstance(text, str):
                self.act(wire.send(n, text))
            elif isinstance(data, (bytes, bytearray)):
                self.act(wire.send(n, bytes(data)))
            else:
                raise ASGIError("websocket.send needs 'text' or 'bytes'")
        elif kind == "websocket.close":
            if self.stage == "connecting":
                self.act(wire.reject(n, 403))
            else:
                code = message.get("code", 1000)
                reason = message.get("reason") or ""
                self.act(wire.close(n, int(code), str(reason)[:120]))
            self.stage = "closed"
        elif kind == "websocket.http.response.start":
            if self.stage != "connecting" or self._deny is not None:
                raise ASGIError("websocket.http.response.start after the handshake")
            status = message.get("status")
            if not isinstance(status, int) or not 400 <= status <= 599:
                raise ASGIError(f"a handshake refusal needs a 4xx/5xx status, not {status!r}")
            self._deny = (status, [])
        elif kind == "websocket.http.response.body":
            if self._deny is None:
                raise ASGIError("websocket.http.response.body before its start")
            self._deny[1].append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self.act(wire.reject(n, self._deny[0], b"".join(self._deny[1])))
                self.stage = "closed"
        else:
            raise ASGIError(f"{kind!r} is not a WebSocket message")

    async def run(self, app: Any, scope: dict[str, Any]) -> None:
        try:
            await app(scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except ASGIError as exc:
            log.error("WebSocket %s: ASGI app error: %s", self.label, exc)
            self._end(500, 1011)
            return
        except Exception:
            log.exception("WebSocket %s: ASGI app raised", self.label)
            self._end(500, 1011)
            return
        self._end(403, 1000)  # returned without deciding: refuse; after accept: close

    def _end(self, refuse: int, close: int) -> None:
        if self.client_gone or self.stage == "closed":
            return
        if self.stage == "connecting":
            self.act(wire.reject(self.number, refuse))
        else:
            self.act(wire.close(self.number, close, "" if close == 1000 else "internal error"))
        self.stage = "closed"


class Lifespan:
    """lifespan.startup once per worker, lifespan.shutdown at its end."""

    def __init__(self, app: Any, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.to_app: asyncio.Queue[Message] = asyncio.Queue()
        self.from_app: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.supported = True

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI, "state": self.state}
        try:
            await self.app(scope, self.to_app.get, self.from_app.put)
        except Exception as exc:
            # An app without lifespan support raises on the unknown scope type.
            await self.from_app.put({"type": "_raised", "error": exc})
        else:
            # Or it returns at once (as uvicorn allows): no answer will come.
            await self.from_app.put({"type": "_raised",
                                     "error": "it returned without answering"})

    async def startup(self, timeout: float) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self.to_app.put({"type": "lifespan.startup"})
        answer = await self._answer(timeout, "startup")
        kind = answer["type"]
        if kind == "_raised":
            self.supported = False
            log.info("the ASGI app does not support lifespan (%s); running without it",
                     answer["error"])
        elif kind == "lifespan.startup.failed":
            raise LifespanError(f"ASGI lifespan startup failed: {answer.get('message', '')}")
        elif kind != "lifespan.startup.complete":
            raise LifespanError(f"ASGI lifespan: {kind!r} in answer to lifespan.startup")

    async def shutdown(self, timeout: float) -> None:
        if not self.supported or self.task is None or self.task.done():
            return
        await self.to_app.put({"type": "lifespan.shutdown"})
        try:
            answer = await self._answer(timeout, "shutdown")
        except LifespanError as exc:
            log.error("%s", exc)
            return
        if answer["type"] == "lifespan.shutdown.failed":
            log.error("ASGI lifespan shutdown failed: %s", answer.get("message", ""))
        elif answer["type"] == "_raised":
            log.error("ASGI lifespan shutdown raised: %r", answer["error"])

    async def _answer(self, timeout: float, what: str) -> Message:
        try:
            return await asyncio.wait_for(self.from_app.get(), timeout)
        except TimeoutError:
            raise LifespanError(f"ASGI lifespan {what}: no answer within {timeout:g}s") \
                from None


async def commit_view(view: SharedState, backend: Backend) -> None:
    """Plain writes an app made through the shared state, committed as one batch."""
    ops = view.take_batch()
    if ops:
        await backend.acall(ops)
