"""Group history: what numbering and keeping messages costs a broadcast, and how fast a
client that missed 1,000 messages catches up.

    .venv/bin/python -m loadtests.bench.history [--subscribers 200] [--messages 2000]
        [--disk-too]

A coordinator, 2 gateways and 1 worker (tests/apps/history_app.py). Subscribers in
one room, half on each gateway; one talker sends `--messages` messages as fast as it
can, each a publish (numbered by the coordinator, kept, fanned out to the gateways)
or a plain broadcast (the worker to each gateway), in turns. Delivered messages/s =
subscribers times messages over the time from the first send to the last delivery.
Recovery: a client leaves, 1,000 messages are published, it comes back with its
(epoch, offset) through the other gateway; the time from its connect to the last
recovered message.

With --disk-too, a second cluster whose coordinator keeps its history on disk
(`--data-dir`: each publish written before any gateway has it) is measured in the
same turns. With --etcd-too, a third with no coordinator, on 3 etcd members on
127.0.0.1 (`--state-backend etcd://...`: each publish a put that etcd numbers, each
gateway delivering from its watch, recovery read back from etcd's revisions).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

from tests.harness import cluster

APP = "tests.apps.history_app:app"


async def one_round(ports: list[int], subscribers: int, messages: int, plain: bool) -> float:
    room = f"r{time.monotonic_ns()}"
    query = "&plain=1" if plain else ""
    subs = [await connect(f"ws://127.0.0.1:{ports[i % 2]}/feed/{room}?x=1{query}",
                          max_queue=None) for i in range(subscribers)]
    talker = await connect(f"ws://127.0.0.1:{ports[0]}/feed/{room}?talk_only=1{query}")
    await asyncio.sleep(0.5)  # every subscription in place at its gateway

    async def drain(ws: object) -> None:
        for _ in range(messages):
            await ws.recv()  # type: ignore[attr-defined]

    readers = [asyncio.create_task(drain(ws)) for ws in subs]
    began = time.perf_counter()
    for i in range(messages):
        await talker.send(f"m{i}")
    await asyncio.wait_for(asyncio.gather(*readers), 120)
    elapsed = time.perf_counter() - began
    for ws in [*subs, talker]:
        await ws.close()
    return subscribers * messages / elapsed


async def recovery(ports: list[int], missed: int) -> float:
    room = f"rec{time.monotonic_ns()}"
    talker = await connect(f"ws://127.0.0.1:{ports[1]}/feed/{room}?talk_only=1")
    reader = await connect(f"ws://127.0.0.1:{ports[0]}/feed/{room}")
    witness = await connect(f"ws://127.0.0.1:{ports[0]}/feed/{room}", max_queue=None)
    await asyncio.sleep(0.3)
    await talker.send("first")
    seen = json.loads(await reader.recv())
    await reader.close()
    for i in range(missed):
        await talker.send(f"m{i}")
    for _ in range(missed + 1):  # every one numbered and delivered: all to recover
        await witness.recv()
    await witness.close()
    began = time.perf_counter()
    back = await connect(f"ws://127.0.0.1:{ports[1]}/feed/{room}?since={seen['epoch']}:"
                         f"{seen['offset']}", max_queue=None)
    marker = json.loads(await back.recv())
    assert marker["recovered"] is True, marker
    for _ in range(missed):
        await back.recv()
    elapsed = time.perf_counter() - began
    await back.close()
    await talker.close()
    return elapsed


def start(stack: contextlib.ExitStack, data_dir: str, backend: str = "") -> list[int]:
    """A cluster of 2 gateways and 1 worker, its coordinator keeping history in memory
    or, with `data_dir`, on disk, or on etcd (`backend`); the gateways' ports."""
    c = stack.enter_context(cluster(interval=["--log-level", "warning"], backend=backend))
    window = ["--history-size", "5000"]
    if not backend:
        c.coordinator.terminate()
        c.coordinator = c.start("coordinator", "--coordinator-bind", c.endpoint, *window,
                                "--log-level", "warning",
                                *(["--data-dir", data_dir] if data_dir else []))
    ports = [int(c.gateway("--log-level", "warning", *window).ready["port"])
             for _ in range(2)]
    c.worker(APP, "--log-level", "warning")
    return ports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--disk-too", action="store_true")
    parser.add_argument("--etcd-too", action="store_true")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"publish (history)": [], "broadcast (none)": []}
    if args.disk_too:
        rates["publish (history on disk)"] = []
    if args.etcd_too:
        rates["publish (history on etcd)"] = []
    catch_up: dict[str, list[float]] = {"coordinator": [], "etcd": []}
    with contextlib.ExitStack() as stack:
        ports = start(stack, "")
        disk = start(stack, stack.enter_context(tempfile.TemporaryDirectory())) \
            if args.disk_too else []
        on_etcd: list[int] = []
        if args.etcd_too:
            from loadtests.bench.state import start_etcd
            members, url = start_etcd(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            for member in members:
                stack.callback(member.wait, 20)
                stack.callback(member.terminate)
            on_etcd = start(stack, "", url)
        for rnd in range(args.rounds):
            sides = [("publish (history)", ports, False), ("broadcast (none)", ports, True)]
            if disk:
                sides.append(("publish (history on disk)", disk, False))
            if on_etcd:
                sides.append(("publish (history on etcd)", on_etcd, False))
            for label, where, plain in sides:
                rate = asyncio.run(one_round(where, args.subscribers, args.messages, plain))
                rates[label].append(rate)
                print(f"round {rnd + 1} {label}: {rate:,.0f} delivered msg/s", file=sys.stderr)
            for backend, where in (("coordinator", ports), ("etcd", on_etcd)):
                if where:
                    catch_up[backend].append(asyncio.run(recovery(where, 1000)))
                    print(f"round {rnd + 1} recovery of 1,000 ({backend}): "
                          f"{catch_up[backend][-1] * 1000:.0f} ms", file=sys.stderr)
    print(f"{args.subscribers} subscribers over 2 gateways, {args.messages} messages, "
          f"{args.rounds} rounds; medians [min-max]\n")
    print("| broadcast | delivered msg/s |\n|---|---:|")
    for label, values in rates.items():
        print(f"| {label} | {statistics.median(values):,.0f} "
              f"[{min(values):,.0f}-{max(values):,.0f}] |")
    pub, plain = (statistics.median(rates[k]) for k in ("publish (history)",
                                                          "broadcast (none)"))
    print(f"\nhistory / none: {pub / plain:.2f}")
    if disk:
        print(f"history on disk / in memory: "
              f"{statistics.median(rates['publish (history on disk)']) / pub:.2f}")
    if on_etcd:
        print(f"history on etcd / on the coordinator: "
              f"{statistics.median(rates['publish (history on etcd)']) / pub:.2f}")
    for backend, times in catch_up.items():
        if times:
            print(f"recovery of 1,000 missed messages ({backend}), connect to caught up: "
                  f"{statistics.median(times) * 1000:.0f} ms "
                  f"[{min(times) * 1000:.0f}-{max(times) * 1000:.0f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
