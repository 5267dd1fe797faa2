"""A Python client for cluster's WebSocket endpoints: RPC, groups with recovery,
presence, reconnection (docs/clients.md).

    async with connect("ws://127.0.0.1:8000/rpc") as c:
        print(await c.call("entity", "get", item_id=42))
        async for item in c.subscribe("room:lobby"):
            if isinstance(item, Gap):
                ...  # messages were missed for good: reload the room some other way
            else:
                print(item.offset, item.data)

Theory of operation
-------------------
One WebSocket at a time. When it drops, the client reconnects after a pause that
starts at 0.5 s and doubles up to 8 s, each with ±25% jitter, until `close()`. After
each (re)connect it subscribes again to every group it holds, sending the last
(epoch, offset) it received of each, so the server sends what was missed, exactly
once and in order, or says it cannot (`Gap`). Messages wait in the subscription's
queue until the application takes them; a full queue stops the client reading its
socket, so a slow consumer is pushed back on (and cut by the server past its
`--ws-max-queue`, then recovered on reconnect) rather than losing anything.

Calls made while disconnected wait in a queue of at most `queue_size` calls, sent
in order after the subscriptions once connected; a call made when the queue is full
fails at once with `QueueFull`. A call sent but not answered when the connection
drops fails with `Disconnected`: it may or may not have run, so it is never sent
twice. `close()` fails whatever is still waiting with `ClientClosed`.

The server side is `App.rpc` and `App.groups` (cluster.rpc): the wire protocol is
the RPC protocol of cluster.rpc, with the group methods in the module `cluster`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from cluster.errors import (
    CallError,
    CallTimeout,
    ClientClosed,
    Disconnected,
    QueueFull,
)

__all__ = ["CallError", "CallTimeout", "Client", "ClientClosed", "Disconnected", "Gap",
           "Message", "QueueFull", "Subscription", "connect"]

log = logging.getLogger("cluster.client")

FIRST_DELAY = 0.5
MAX_DELAY = 8.0

# Connection states, in the order a connection goes through them.
CONNECTING, OPEN, RECONNECTING, CLOSED = "connecting", "open", "reconnecting", "closed"
# A handshake answered with one of these will be answered so again: stop trying.
FINAL_STATUSES = frozenset({400, 401, 403, 404, 405, 426})


@dataclass(frozen=True, slots=True)
class Message:
    """A message published to a group (cluster.publish), numbered in its epoch."""

    group: str
    epoch: str
    offset: int
    data: Any


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages of `group` were missed and cannot be recovered (too old, or a new
    epoch): what follows is live. The application reloads what it shows."""

    group: str
    epoch: str


class Subscription:
    """A group's published messages, in offset order, as an async iterator."""

    def __init__(self, client: Client, group: str, maxsize: int) -> None:
        self.client = client
        self.group = group
        self.queue: asyncio.Queue[Message | Gap | None] = asyncio.Queue(maxsize)
        self.since: list[Any] | None = None  # [epoch, offset] of the last message received
        self.active = True
        self.error: CallError | None = None  # why the server refused it

    def __aiter__(self) -> AsyncIterator[Message | Gap]:
        return self._items()

    async def _items(self) -> AsyncIterator[Message | Gap]:
        while True:
            item = await self.queue.get()
            if item is None:
                if self.error is not None:
                    raise self.error
                return
            yield item

    async def unsubscribe(self) -> None:
        await self.client.unsubscribe(self.group)


class Client:
    def __init__(self, url: str, *, call_timeout: float = 10.0, queue_size: int = 100,
                 subscription_buffer: int = 10_000, headers: dict[str, str] | None = None,
                 first_delay: float = FIRST_DELAY, max_delay: float = MAX_DELAY) -> None:
        self.url = url
        self.call_timeout = call_timeout
        self.queue_size = queue_size
        self.subscription_buffer = subscription_buffer
        self.headers = headers or {}
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.state = CONNECTING
        self.close_code: int | None = None  # of the last connection that closed
        self.attempts = 0  # failed attempts since the last open
        self.subscriptions: dict[str, Subscription] = {}
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}  # sent, not answered
        # Not sent yet, in order: calls, and subscriptions (group set). One writer per
        # connection sends them, so they leave in the order they were made.
        self._outbox: deque[Outgoing] = deque()
        self._wake = asyncio.Event()
        self._listeners: dict[str, list[Callable[..., Any]]] = {}
        self._opened = asyncio.Event()
        self._closing = False
        self._runner: asyncio.Task[None] | None = None

    # -- events ------------------------------------------------------------------
    def on(self, event: str, callback: Callable[..., Any]) -> None:
        """"state" (state, close code or None), "message" (data: a push or a plain
        broadcast), "gap" (Gap): called on the loop, in order."""
        self._listeners.setdefault(event, []).append(callback)

    def _emit(self, event: str, *args: Any) -> None:
        for callback in self._listeners.get(event, ()):
            try:
                callback(*args)
            except Exception:
                log.exception("a %r listener raised", event)

    def _set_state(self, state: str) -> None:
        self.state = state
        self._emit("state", state, self.close_code)

    # -- lifetime ------------------------------------------------------------------
    async def start(self, wait: bool = True) -> Client:
        self._runner = asyncio.get_running_loop().create_task(self._run())
        if wait:
            opened = asyncio.ensure_future(self._opened.wait())
            done, _ = await asyncio.wait({opened, self._runner},
                                         return_when=asyncio.FIRST_COMPLETED)
            if opened not in done:
                opened.cancel()
                self._runner.result()  # the reason it stopped
                raise ConnectionError(f"closed before it opened (code {self.close_code})")
        return self

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._fail_all(ClientClosed)
        for sub in self.subscriptions.values():
            sub.active = False
            _offer(sub.queue, None)
        if self.state != CLOSED:
            self._set_state(CLOSED)

    async def __aenter__(self) -> Client:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        while not self._closing:
            try:
                async with ws_connect(self.url, additional_headers=self.headers,
                                      open_timeout=self.call_timeout) as ws:
                    self._ws = ws
                    self.attempts = 0
                    self._set_state(OPEN)
                    self._opened.set()
                    self._resume()
                    writer = asyncio.get_running_loop().create_task(self._write(ws))
                    try:
                        await self._read(ws)
                    finally:
                        writer.cancel()
                self.close_code = ws.close_code
            except InvalidStatus as exc:
                status = exc.response.status_code
                self.close_code = status
                if status in FINAL_STATUSES:
                    log.warning("%s refused the connection with %d; not retrying",
                                self.url, status)
                    self._fail_all(ClientClosed)
                    self._set_state(CLOSED)
                    return
            except (TimeoutError, OSError, WebSocketException) as exc:
                self.close_code = getattr(self._ws, "close_code", None) if \
                    isinstance(exc, ConnectionClosed) else None
            finally:
                self._ws = None
                self._fail_pending()
            if self._closing:
                return
            self.attempts += 1
            self._set_state(RECONNECTING)
            pause = min(self.max_delay, self.first_delay * 2 ** (self.attempts - 1))
            await asyncio.sleep(pause * random.uniform(0.75, 1.25))

    def _resume(self) -> None:
        """After every connect: the subscriptions first (with what each last saw),
        then the calls that waited."""
        calls = [entry for entry in self._outbox if entry.group is None]
        self._outbox.clear()
        for sub in self.subscriptions.values():
            self._outbox.append(self._subscribe_entry(sub))
        self._outbox.extend(calls)
        self._wake.set()

    def _subscribe_entry(self, sub: Subscription) -> Outgoing:
        rid, future = self._new_call()
        future.add_done_callback(lambda f: self._subscribed(sub, f))
        return Outgoing(rid, _request(rid, "cluster", "subscribe",
                                      {"group": sub.group, "since": sub.since}),
                        future, sub.group)

    def _enqueue(self, entry: Outgoing) -> None:
        self._outbox.append(entry)
        self._wake.set()

    async def _write(self, ws: ClientConnection) -> None:
        outbox = self._outbox
        while True:
            while outbox:
                entry = outbox[0]
                if entry.future.done():  # given up on (timed out) before it was sent
                    outbox.popleft()
                    continue
                if entry.group is not None:  # its latest position, not the one queued
                    sub = self.subscriptions.get(entry.group)
                    if sub is None:
                        outbox.popleft()
                        continue
                    entry.text = _request(entry.rid, "cluster", "subscribe",
                                          {"group": sub.group, "since": sub.since})
                self._pending[entry.rid] = entry.future
                try:
                    await ws.send(entry.text)
                except ConnectionClosed:
                    self._pending.pop(entry.rid, None)  # not sent: it waits for the next
                    return
                outbox.popleft()
            self._wake.clear()
            await self._wake.wait()

    def _subscribed(self, sub: Subscription, future: asyncio.Future[Any]) -> None:
        """The server's answer to a subscription: a refusal ends it."""
        error = None if future.cancelled() else future.exception()
        if isinstance(error, CallError) and not isinstance(error, (Disconnected,
                                                                    ClientClosed)):
            log.warning("subscription to %r refused: %s", sub.group, error)
            sub.error = error
            sub.active = False
            if self.subscriptions.get(sub.group) is sub:
                del self.subscriptions[sub.group]
            _offer(sub.queue, None)

    async def _read(self, ws: ClientConnection) -> None:
        async for text in ws:
            if isinstance(text, bytes):
                self._emit("message", text)
                continue
            try:
                frame = json.loads(text)
            except ValueError:
                self._emit("message", text)
                continue
            if not isinstance(frame, dict):
                self._emit("message", frame)
            elif "request_id" in frame and frame.get("event") in ("result", "error"):
                self._answer(frame)
            elif "group" in frame and "offset" in frame:
                await self._numbered(frame)
            elif "group" in frame and "recovered" in frame:
                await self._recovered(frame)
            else:
                self._emit("message", frame)

    def _answer(self, frame: dict[str, Any]) -> None:
        future = self._pending.pop(frame["request_id"], None) \
            if isinstance(frame["request_id"], int) else None
        if future is None or future.done():
            return
        if frame["event"] == "result":
            future.set_result(frame.get("data"))
        else:
            error = frame.get("data") or {}
            future.set_exception(CallError(str(error.get("error")),
                                           str(error.get("message"))))

    async def _numbered(self, frame: dict[str, Any]) -> None:
        sub = self.subscriptions.get(frame["group"])
        if sub is None or not sub.active:
            return
        since = sub.since
        offset = frame["offset"]
        if since is not None and since[0] == frame["epoch"] and offset <= since[1]:
            return  # already delivered (the server never repeats one; be sure anyway)
        sub.since = [frame["epoch"], offset]
        await sub.queue.put(Message(frame["group"], frame["epoch"], offset,
                                    frame.get("data")))

    async def _recovered(self, frame: dict[str, Any]) -> None:
        sub = self.subscriptions.get(frame["group"])
        if frame["recovered"] or sub is None or not sub.active or sub.since is None:
            return  # caught up; or a first subscription, which has nothing to miss
        gap = Gap(frame["group"], frame.get("epoch") or "")
        sub.since = None  # live from here
        self._emit("gap", gap)
        await sub.queue.put(gap)

    # -- calls ---------------------------------------------------------------------
    def _new_call(self) -> tuple[int, asyncio.Future[Any]]:
        return next(self._ids), asyncio.get_running_loop().create_future()

    async def call(self, module: str, method: str, **data: Any) -> Any:
        """Call `module.method(**data)` on the server; its result, or CallError."""
        if self._closing or self.state == CLOSED:
            raise ClientClosed()
        if self.state != OPEN and \
                sum(1 for e in self._outbox if e.group is None) >= self.queue_size:
            raise QueueFull(self.queue_size)
        rid, future = self._new_call()
        self._enqueue(Outgoing(rid, _request(rid, module, method, data), future, None))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.call_timeout)
        except TimeoutError:
            self._pending.pop(rid, None)
            future.cancel()
            raise CallTimeout(self.call_timeout) from None

    def subscribe(self, group: str) -> Subscription:
        """The group's published messages from now on (and, across reconnects, every
        one of them once and in order, or a Gap)."""
        sub = self.subscriptions.get(group)
        if sub is not None:
            return sub
        sub = self.subscriptions[group] = Subscription(self, group,
                                                       self.subscription_buffer)
        if self.state == OPEN:
            self._enqueue(self._subscribe_entry(sub))
        return sub

    async def unsubscribe(self, group: str) -> None:
        sub = self.subscriptions.pop(group, None)
        if sub is None:
            return
        sub.active = False
        _offer(sub.queue, None)
        if self.state == OPEN:
            await self.call("cluster", "unsubscribe", group=group)

    async def presence(self, group: str) -> dict[str, Any]:
        """{"group", "count", "conns"}: who is in the group, over every gateway."""
        answer: dict[str, Any] = await self.call("cluster", "presence", group=group)
        return answer

    async def send(self, data: str | bytes) -> None:
        """A raw message to the server's handler (not RPC); dropped while disconnected."""
        if self._ws is not None:
            await self._ws.send(data)

    # -- failures ------------------------------------------------------------------
    def _fail_pending(self) -> None:
        """The connection dropped: what was sent and not answered may or may not have
        run, so it fails; what was not sent waits for the next connection."""
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(Disconnected())

    def _fail_all(self, error: Callable[[], CallError]) -> None:
        for future in list(self._pending.values()) + [e.future for e in self._outbox]:
            if not future.done():
                future.set_exception(error())
        self._pending.clear()
        self._outbox.clear()


@dataclass(slots=True)
class Outgoing:
    rid: int
    text: str
    future: asyncio.Future[Any]
    group: str | None  # a subscription's, which is sent again after every reconnect


def _request(rid: int, module: str, method: str, data: dict[str, Any]) -> str:
    return json.dumps({"request_id": rid, "module": module, "method": method,
                       "data": data}, separators=(",", ":"))


def _offer(queue: asyncio.Queue[Any], item: Any) -> None:
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(item)


def connect(url: str, **options: Any) -> Client:
    """A client for `url` (ws:// or wss://), to use as `async with connect(url) as c`.
    Options: call_timeout (10 s), queue_size (100 calls), subscription_buffer (10,000
    messages a subscription holds before the client stops reading), headers."""
    return Client(url, **options)
