"""cluster.client against a real cluster: calls, errors, subscriptions with recovery
across a gateway killed and restarted mid-stream, presence, the queue while
disconnected."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from cluster.client import (
    CallError,
    CallTimeout,
    ClientClosed,
    Gap,
    Message,
    QueueFull,
    connect,
)
from tests.harness import Cluster, cluster, wait_until

APP = "tests.apps.clients_app:app"


@pytest.fixture
def two_gateways() -> Iterator[tuple[Cluster, list[int]]]:
    with cluster() as c:
        ports = [int(c.gateway().ready["port"]) for _ in range(2)]
        c.worker(APP)
        c.worker(APP)
        yield c, ports


def post(port: int, path: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST",
                                     data=b"")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_calls_and_errors(two_gateways: tuple[Cluster, list[int]]) -> None:
    _, ports = two_gateways

    async def main() -> None:
        async with connect(f"ws://127.0.0.1:{ports[0]}/rpc", call_timeout=2) as c:
            assert await c.call("echo", "echo", a=1, b=[2]) == {"a": 1, "b": [2]}
            with pytest.raises(CallError) as missing:
                await c.call("echo", "nothing")
            assert missing.value.kind == "not_found"
            with pytest.raises(CallError) as refused:
                await c.call("cluster", "subscribe", group="secret:x")
            assert refused.value.kind == "forbidden"
            with pytest.raises(CallTimeout):
                await c.call("echo", "slow", seconds=2.5)
            # Calls on one connection run in order: this one's answer comes after the
            # slow one's, which the client drops (its caller has given up).
            assert await c.call("echo", "echo", after="timeout") == {"after": "timeout"}
        assert c.state == "closed"
        with pytest.raises(ClientClosed):
            await c.call("echo", "echo")

    run(main())


def test_a_refused_subscription_ends_its_iterator(two_gateways: tuple[Cluster, list[int]]
                                                  ) -> None:
    _, ports = two_gateways

    async def main() -> None:
        async with connect(f"ws://127.0.0.1:{ports[0]}/rpc") as c:
            with pytest.raises(CallError) as refused:
                async for _ in c.subscribe("secret:x"):
                    pass
            assert refused.value.kind == "forbidden"

    run(main())


def test_subscription_presence_and_messages(two_gateways: tuple[Cluster, list[int]]
                                            ) -> None:
    _, ports = two_gateways

    async def main() -> None:
        async with connect(f"ws://127.0.0.1:{ports[0]}/rpc") as a, \
                connect(f"ws://127.0.0.1:{ports[1]}/rpc") as b:
            feed = b.subscribe("room:p")
            who = await b.presence("room:p")  # answered after the subscription is in place
            assert who["count"] == 1, who
            assert (await a.presence("room:p"))["conns"] == who["conns"]
            await a.call("room", "say", group="room:p", text="hi")
            item = await anext(aiter(feed))
            assert isinstance(item, Message) and item.data == {"text": "hi"}
            assert item.offset == 1
            pushed: list[Any] = []
            b.on("message", pushed.append)
            conn = await b.call("echo", "whoami")
            await asyncio.to_thread(post, ports[0], f"/push?conn={conn}&text=psst")
            await until(lambda: pushed == ["psst"], "the push")
            await b.unsubscribe("room:p")
            assert (await a.presence("room:p"))["count"] == 0

    run(main())


async def until(predicate: Any, what: str) -> None:
    """The harness's async wait, for a plain predicate on this loop's state."""
    async def check() -> Any:
        return predicate()
    await wait_until(check, 10, what, every=0.02)


def test_recovery_across_a_gateway_killed_and_restarted(
        two_gateways: tuple[Cluster, list[int]]) -> None:
    """The Python script of docs/clients.md: every message once and in order while the
    gateway it is connected to is killed and started again on the same port."""
    c, ports = two_gateways
    victim = c.procs[1]  # the first gateway
    total = 600

    async def main() -> None:
        states: list[str] = []
        async with connect(f"ws://127.0.0.1:{ports[0]}/rpc") as client:
            client.on("state", lambda state, code: states.append(state))
            feed = client.subscribe("room:r")
            await client.presence("room:r")  # in place
            # publish() from two workers may number two batches in either order: the
            # offsets say "in order", the payloads that every one came.
            got: list[int] = []
            offsets: list[int] = []

            async def publisher() -> None:
                for first in range(1, total + 1, 20):
                    await asyncio.to_thread(post, ports[1],
                                            f"/publish?group=room:r&first={first}&count=20")
                    if first == 201:
                        victim.kill()
                        restarted = await asyncio.to_thread(
                            c.gateway, "--port", str(ports[0]))
                        c.procs.append(restarted)

            task = asyncio.create_task(publisher())
            async for item in feed:
                assert not isinstance(item, Gap), item
                got.append(item.data["n"])
                offsets.append(item.offset)
                if len(got) == total:
                    break
            await task
            assert offsets == list(range(1, total + 1))
            assert sorted(got) == list(range(1, total + 1))
            assert "reconnecting" in states and states.count("open") >= 1, states

    run(main())


def test_calls_wait_in_a_bounded_queue_while_disconnected(
        two_gateways: tuple[Cluster, list[int]]) -> None:
    c, ports = two_gateways
    victim = c.procs[1]

    async def main() -> None:
        async with connect(f"ws://127.0.0.1:{ports[0]}/rpc", queue_size=3,
                           call_timeout=30) as client:
            victim.kill()
            await until(lambda: client.state == "reconnecting", "the drop")
            queued = [asyncio.create_task(client.call("echo", "echo", n=n)) for n in range(3)]
            await asyncio.sleep(0)  # one loop turn: the three calls run up to their queueing
            with pytest.raises(QueueFull):
                await client.call("echo", "echo", n=3)
            c.procs.append(c.gateway("--port", str(ports[0])))
            assert [await t for t in queued] == [{"n": 0}, {"n": 1}, {"n": 2}]

    run(main())
