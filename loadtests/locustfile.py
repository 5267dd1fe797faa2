"""Locust load for the demo app (examples/demo.py): HTTP and WebSocket users.

    make loadtest                      # a bounded headless run with HTML and CSV reports
    .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

HttpUser: /hello, a typed route, the shared counter. ChatUser: joins a chat room
over WebSocket, says something, and measures how long the broadcast takes to come
back (through the worker that handles its connection and every gateway), reported
to locust as a request of type WS. With LOAD_GATEWAYS="http://h:8000,http://h:8001"
chat users spread over several gateways, so a room spans them.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from typing import Any

import websocket  # websocket-client: blocking, and gevent-friendly under locust
from locust import HttpUser, User, between, task

ROOMS = 5
_counter = itertools.count()


class WebUser(HttpUser):
    wait_time = between(0.05, 0.2)

    @task(4)
    def hello(self) -> None:
        self.client.get("/hello")

    @task(2)
    def typed_route(self) -> None:
        self.client.get("/routes/hello/locust", name="/routes/hello/<name>")

    @task(1)
    def counter(self) -> None:
        with self.client.post("/counter", catch_response=True) as resp:
            if resp.status_code == 200 and "counter" not in resp.json():
                resp.failure("no counter in the answer")


class ChatUser(User):
    wait_time = between(0.2, 0.5)

    def on_start(self) -> None:
        bases = [b for b in os.environ.get("LOAD_GATEWAYS", "").split(",") if b] or \
            [self.host or "http://127.0.0.1:8000"]
        n = next(_counter)
        base = bases[n % len(bases)].replace("http://", "ws://").replace("https://", "wss://")
        self.name = f"u{n}-{uuid.uuid4().hex[:6]}"
        room = f"load{n % ROOMS}"
        self.ws = websocket.create_connection(f"{base}/chat/{room}?name={self.name}",
                                              timeout=10)

    def on_stop(self) -> None:
        self.ws.close()

    @task
    def say(self) -> None:
        text = f"{self.name} {uuid.uuid4().hex}"
        began = time.perf_counter()
        error: Exception | None = None
        length = 0
        try:
            self.ws.send(text)
            # Others' messages and presence news arrive too; wait for our own echo.
            while True:
                raw = self.ws.recv()
                length = len(raw)
                msg: dict[str, Any] = json.loads(raw)
                data = msg.get("data")  # chat messages are published with an offset
                if isinstance(data, dict) and data.get("text") == text:
                    break
        except Exception as exc:  # reported to locust as a failed request
            error = exc
        self.environment.events.request.fire(
            request_type="WS", name="chat broadcast round trip",
            response_time=(time.perf_counter() - began) * 1000, response_length=length,
            exception=error, context={})
