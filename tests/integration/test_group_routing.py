"""A broadcast goes only to the gateways that hold members of its group, and
`members()` asks only those; a member that joined is never skipped: four gateways,
two workers, real processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from cluster.plumbing import wire
from tests.harness import Cluster, Proc, cluster, wait_for
from tests.integration.test_observability import metrics_port, sample, scrape

WS_APP = "tests.apps.ws_app:app"
Fixture = tuple[Cluster, list[Proc], list[Proc]]


@pytest.fixture(scope="module")
def four_gateways() -> Iterator[Fixture]:
    with cluster() as c:
        gateways = [c.gateway("--metrics-port", "0") for _ in range(4)]
        workers = [c.worker(WS_APP, "--metrics-port", "0") for _ in range(2)]
        yield c, gateways, workers


def url(gw: Proc, path: str) -> str:
    return f"ws://127.0.0.1:{gw.ready['port']}{path}"


def metric(proc: Proc, name: str) -> float:
    return sample(scrape(metrics_port(proc.ready)), name)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_a_room_on_one_gateway_costs_the_others_nothing(four_gateways: Fixture) -> None:
    _c, gateways, workers = four_gateways
    home = gateways[0]
    before = [metric(g, "cluster_gateway_broadcasts_total") for g in gateways]
    sends = sum(metric(w, "cluster_worker_broadcast_sends_total") for w in workers)

    async def go() -> None:
        async with connect(url(home, "/room/lonely")) as talker, \
                connect(url(home, "/room/lonely")) as member:
            for i in range(200):
                await talker.send(f"m{i}")
            got = [await member.recv() for _ in range(200)]
            assert [str(g).split(": ", 1)[1] for g in got] == [f"m{i}" for i in range(200)]
            await member.send("who")
            who = json.loads(await member.recv())
            assert who["count"] == 2 and {c.split("/")[0] for c in who["conns"]} == \
                {home.ready["id"]}
    run(go())
    after = [metric(g, "cluster_gateway_broadcasts_total") for g in gateways]
    assert after[0] - before[0] == 200
    assert after[1:] == before[1:], (before, after)  # nothing sent to the other three
    assert sum(metric(w, "cluster_worker_broadcast_sends_total") for w in workers) - sends == 200


def test_a_member_that_joined_gets_the_next_broadcast(four_gateways: Fixture) -> None:
    """Fresh rooms, each new to the gateway a member joins it through: once that member
    has its connection open, a post through another gateway (another worker, maybe)
    reaches it. Fifty times, so a notice that lagged would show."""
    _c, gateways, _workers = four_gateways

    async def one(n: int) -> None:
        room = f"/room/fresh{n}"
        async with connect(url(gateways[1], room)) as poster, \
                connect(url(gateways[2 + n % 2], room)) as joiner:
            await poster.send(f"hello {n}")
            assert str(await asyncio.wait_for(joiner.recv(), 10)).endswith(f": hello {n}")

    async def go() -> None:
        for n in range(50):
            await one(n)
    run(go())


def test_presence_lists_every_gateway_holding_the_group(four_gateways: Fixture) -> None:
    _c, gateways, _workers = four_gateways

    async def go() -> None:
        conns = [await connect(url(g, "/room/everywhere")) for g in gateways]
        try:
            await conns[0].send("who")
            who = json.loads(await conns[0].recv())
            assert who["count"] == 4
            assert {c.split("/")[0] for c in who["conns"]} == {g.ready["id"] for g in gateways}
            await conns[3].close()
            await conns[1].send("who")  # a gateway whose last member left is not asked
            deadline = asyncio.get_running_loop().time() + 10
            while (who := json.loads(await conns[1].recv()))["count"] != 3:
                assert asyncio.get_running_loop().time() < deadline, who
                await conns[1].send("who")
        finally:
            for ws in conns:
                await ws.close()
    run(go())


@pytest.mark.slow
def test_a_gateway_restarted_on_the_same_endpoint_gets_nothing_meant_for_the_old_one(
        ) -> None:
    """A worker's socket for a gateway that died still holds, and keeps sending, what
    was meant for it; ZeroMQ delivers that to whatever listens at the endpoint next. A
    push to the old gateway's connection 1 must not reach the new one's connection 1,
    another client."""
    from tests.integration.test_deploy import free_port

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # Slow heartbeats: the worker keeps its link to the dead gateway for seconds.
    with cluster(interval=["--heartbeat-interval", "2"]) as c:
        other = c.gateway()
        c.worker(WS_APP)
        old = c.gateway("--dispatch-bind", endpoint, "--wait-for-worker")

        async def whoami(gw: Proc) -> tuple[Any, str]:
            ws = await connect(url(gw, "/echo"))
            await ws.send("whoami")
            return ws, json.loads(await ws.recv())["conn"]

        async def first() -> str:
            ws, conn = await whoami(old)
            await ws.close()
            return conn

        old_conn = run(first())
        old.kill()
        new = c.gateway("--dispatch-bind", endpoint, "--wait-for-worker")

        async def then() -> None:
            stranger, new_conn = await whoami(new)
            assert new_conn.split("/")[1] == old_conn.split("/")[1]  # the same number
            async with connect(url(other, "/room/pusher")) as pusher:
                await pusher.send(f"push {old_conn} secret")
                assert json.loads(await pusher.recv()) == {"pushed": True}  # old link
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(stranger.recv(), 1.0)  # the deadline is the test
            await stranger.close()

        run(then())
        new.wait_log("meant for another gateway at this endpoint")


def test_an_outside_publishers_broadcast_reaches_only_the_holding_gateway(
        four_gateways: Fixture) -> None:
    """`Publisher` (a script, outside the cluster) broadcasts through the coordinator,
    which knows the holders: the three gateways without a member get nothing."""
    from cluster.publisher import Publisher
    c, gateways, _workers = four_gateways
    home = gateways[1]
    before = [metric(g, "cluster_gateway_broadcasts_total") for g in gateways]

    async def go() -> None:
        async with connect(url(home, "/room/outside")) as member:
            with Publisher(c.endpoint, keys=c.keys) as pub:
                for i in range(100):
                    pub.broadcast("room:outside", f"news {i}")
                got = [await asyncio.wait_for(member.recv(), 10) for _ in range(100)]
            assert got == [f"news {i}" for i in range(100)]
    run(go())
    after = [metric(g, "cluster_gateway_broadcasts_total") for g in gateways]
    assert after[1] - before[1] == 100
    others = [0, 2, 3]
    assert [after[i] for i in others] == [before[i] for i in others], (before, after)


def test_an_outside_publishers_push_and_broadcast_keep_their_order(
        four_gateways: Fixture) -> None:
    """A push and a broadcast from one Publisher to one client arrive as sent (both
    go by the coordinator's one link to that gateway)."""
    from cluster.publisher import Publisher
    c, gateways, _workers = four_gateways

    async def go() -> None:
        async with connect(url(gateways[2], "/room/ordered")) as member:
            await member.send("who")
            conn = json.loads(await member.recv())["conns"][0]
            with Publisher(c.endpoint, keys=c.keys) as pub:
                for i in range(50):
                    assert pub.push(conn, f"push {i}")
                    pub.broadcast("room:ordered", f"all {i}")
                got = [await asyncio.wait_for(member.recv(), 10) for _ in range(100)]
            assert got == [m for i in range(50) for m in (f"push {i}", f"all {i}")]
    run(go())


def test_a_member_that_joined_gets_the_next_outside_broadcast(
        four_gateways: Fixture) -> None:
    """A room new to the gateway a member joins it through: once the member's
    connection is open, the coordinator knows that gateway holds the room."""
    from cluster.publisher import Publisher
    c, gateways, _workers = four_gateways

    async def go() -> None:
        with Publisher(c.endpoint, keys=c.keys) as pub:
            for n in range(30):
                async with connect(url(gateways[n % 4], f"/room/outfresh{n}")) as joiner:
                    pub.broadcast(f"room:outfresh{n}", f"hello {n}")
                    assert await asyncio.wait_for(joiner.recv(), 10) == f"hello {n}"
    run(go())


def test_a_relay_the_coordinator_cannot_hand_on_costs_one_line(four_gateways: Fixture) -> None:
    """Data that is not text or bytes, or a push to a gateway not in the cluster: the
    coordinator refuses each with one log line and goes on."""
    c, _gateways, _workers = four_gateways
    probe = c.probe()
    try:
        probe.sock.send(wire.encode_one(wire.RELAY_BROADCAST, id=probe.id, group="room:odd",
                                        data={"not": "text"}))
        probe.sock.send(wire.encode_one(wire.RELAY_PUSH, id=probe.id, gateway="gw-nowhere",
                                        conn=1, data="x"))
        log = wait_for(lambda: (text := c.coordinator.log()).count("relay refused") >= 2
                       and text, 10, "two refusals in the coordinator's log")
        assert "a broadcast to 'room:odd' with dict data" in log
        assert "a push to gw-nowhere/1" in log
    finally:
        probe.close()
    test_an_outside_publishers_push_and_broadcast_keep_their_order(four_gateways)
