"""The runner of an ASGI app: one task per HTTP request, one per WebSocket
connection, fed by the worker's gateway links. The ASGI protocol itself (scopes,
message order) is cluster/worker/asgi.py; this module is the glue to the worker.
Admission under --concurrency is the runner's (runner.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from cluster.errors import StateError
from cluster.plumbing import wire
from cluster.plumbing.config import WorkerConfig
from cluster.state import Backend, SharedState
from cluster.worker.asgi import (
    ASGIHandler,
    HttpExchange,
    WebSocketSession,
    commit_view,
    run_http,
)
from cluster.worker.messages import ReplyLink, server_error
from cluster.worker.outcomes import HandlerOutcomes
from cluster.worker.runner import Runner
from cluster.worker.ws import build_ws_request
from cluster.worker.ws import connect_info as connect_ws_info
from cluster.worker.ws_events import HANDOVER, KINDS

log = logging.getLogger("cluster.worker.asgi")

ROUTE = "*"  # an ASGI app routes by itself: the worker sees no route patterns


class AsgiRunner(Runner):
    def __init__(self, loop: asyncio.AbstractEventLoop, config: WorkerConfig,
                 outcomes: HandlerOutcomes, state: Backend, adapter: ASGIHandler) -> None:
        super().__init__(loop, config, outcomes)
        self.state = state
        self.adapter = adapter
        self.http: dict[tuple[str, int], HttpExchange] = {}  # running requests
        self.ws: dict[str, WebSocketSession] = {}  # running connections

    def close(self, timeout: float) -> None:
        """Nothing to stop: the app's runs are tasks on the loop, which ends with us."""

    # -- HTTP ------------------------------------------------------------------------
    def start(self, link: ReplyLink, env: dict[str, Any]) -> None:
        self.loop.create_task(self._run_http(link, env))

    async def _run_http(self, link: ReplyLink, env: dict[str, Any]) -> None:
        config = self.config
        began = time.perf_counter()
        rid: int = env["id"]
        label = f"{link.gateway_id}/{rid}"
        try:
            # conn: the connection as push() names it (an event stream's, if it becomes one)
            scope, view = self.adapter.http_scope(env, label,
                                                  f"{link.gateway_id}/{env['conn']}")
        except (TypeError, ValueError):  # only a broken frame: the gateway sends pairs
            log.exception("request %s could not be prepared", label)
            self.send(link, server_error(rid, label))
            return
        exchange = HttpExchange(rid, label, env["body"], link, self,
                                stall_timeout=config.stream_stall_timeout,
                                request_headers=env["headers"],
                                gzip_min_size=config.gzip_min_size)
        key = (link.gateway_id, rid)
        self.http[key] = exchange
        status = 500
        try:
            status = await run_http(self.adapter.app, scope, exchange)
            await commit_view(view, self.state)
        except StateError as exc:  # StateUnavailable too: the answer is already out
            log.error("request %s: the app's state writes were not committed: %s",
                      label, exc, extra={"request_id": label})
        finally:
            self.http.pop(key, None)
            self.streams.close(link.gateway_id, rid)
        self.outcomes.record((ROUTE, status), time.perf_counter() - began)

    def client_gone(self, link: ReplyLink, rid: int) -> None:
        exchange = self.http.get((link.gateway_id, rid))
        if exchange is not None:
            exchange.client_gone()
        else:
            super().client_gone(link, rid)

    # -- WebSocket -------------------------------------------------------------------
    def ws_event(self, link: ReplyLink, env: dict[str, Any]) -> None:
        """The app runs once per connection; its events feed that run, in order."""
        if env["k"] in HANDOVER:
            log.warning("an ASGI app cannot shard; %s ignored", env["k"])
            return
        kind = KINDS[env["k"]]
        self.ws_counts[kind] = self.ws_counts.get(kind, 0) + 1
        number: int = env["conn"]
        key = f"{link.gateway_id}/{number}"
        if kind == "ws.connect":
            req = build_ws_request(kind, key, connect_ws_info(env), env)
            scope, view = self.adapter.websocket_scope(req, env["headers"])

            def act(action: list[Any]) -> None:
                link.post(wire.envelope(wire.WS_ACTIONS, actions=[action]))
            started = WebSocketSession(number, key, act)
            self.ws[key] = started
            self.loop.create_task(self._run_ws(key, started, scope, view))
            return
        session = self.ws.get(key)
        if session is None:
            return  # the app's run is over; the gateway learns of it from the close
        if kind == "ws.message":
            text, data = env.get("text"), env.get("bytes")
            session.message(text if isinstance(text, str) else None,
                            data if isinstance(data, bytes) else None)
        else:
            session.closed(env["code"], env["reason"])

    async def _run_ws(self, key: str, session: WebSocketSession, scope: dict[str, Any],
                      view: SharedState) -> None:
        try:
            await session.run(self.adapter.app, scope)
            await commit_view(view, self.state)
        except StateError as exc:
            log.error("WebSocket %s: the app's state writes were not committed: %s", key, exc)
        finally:
            self.ws.pop(key, None)
