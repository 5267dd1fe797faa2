"""Rooms that each live on one gateway: what a broadcast costs the gateways that do
not hold its room. Two checkouts side by side, in turns (this one, and --baseline,
say one from before broadcasts were routed to the gateways holding the group).

    .venv/bin/python -m loadtests.bench.rooms --baseline DIR [--gateways 4]
        [--members 25] [--messages 2000] [--rounds 3] [--talking 1]

Each side: a coordinator, `--gateways` gateways and 2 workers running the tests'
room handler (tests/apps/ws_app.py: a message to /room/NAME is broadcast to the
room). Room i has `--members` WebSocket clients, all on gateway i, and one talker
there that sends `--messages` messages as fast as it can; all rooms talk at once, or
with --talking N only the first N (the other gateways then hold no room that talks:
what they spend is what a broadcast costs a gateway that does not hold its group).
Delivered messages/s = deliveries over the time from the first send to the last
delivery. CPU is read from /proc for each process, per broadcast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect

from cluster.plumbing.child import read_ready
from loadtests.bench.servers import CLOCK_TICKS, ROOT, bench_keys, free_port

APP = "tests.apps.ws_app:app"


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Side:
    def __init__(self, name: str, checkout: Path, gateways: int) -> None:
        self.name = name
        self.checkout = checkout
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.ports: list[int] = []
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        security = ["--keys", bench_keys()]
        try:
            self._start("coordinator", "--coordinator-bind", endpoint, *security)
            for _ in range(gateways):
                info = self._start("gateway", "--port", "0", "--coordinator", endpoint,
                                   *security)
                self.ports.append(int(info["port"]))
            for _ in range(2):
                self._start("worker", "--coordinator", endpoint, "--handler", APP, *security)
        except BaseException:
            self.stop()
            raise

    def _start(self, role: str, *args: str) -> dict[str, str]:
        read_fd, write_fd = os.pipe()
        # cwd: `python -m cluster` runs the checkout it starts in.
        proc = subprocess.Popen([sys.executable, "-m", "cluster", role, *args,
                                 "--log-level", "warning", "--ready-fd", str(write_fd)],
                                cwd=self.checkout, pass_fds=(write_fd,),
                                env={**os.environ, "PYTHONPATH": f"{self.checkout}:{ROOT}"},
                                start_new_session=True)
        os.close(write_fd)
        try:
            info = read_ready(read_fd, proc, 30, role)
        finally:
            os.close(read_fd)
        self.procs.append((role, proc))
        return info

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: each gateway apart (gateway 0 holds room 0, ...), the
        workers and the coordinator."""
        out: dict[str, float] = {}
        gateway = 0
        for role, proc in self.procs:
            label = role
            if role == "gateway":
                label = f"gateway {gateway}"
                gateway += 1
            out[label] = out.get(label, 0.0) + cpu_seconds(proc.pid)
        return out

    def stop(self) -> None:
        for _role, proc in reversed(self.procs):
            proc.terminate()
        for _role, proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def one_round(ports: list[int], members: int, messages: int, talking: int
                    ) -> tuple[float, int]:
    tag = time.monotonic_ns()
    rooms = []
    for i, port in enumerate(ports):
        path = f"ws://127.0.0.1:{port}/room/b{tag}x{i}"
        clients = [await connect(path, max_queue=None) for _ in range(members)]
        talker = await connect(path)
        rooms.append((clients, talker))
    await asyncio.sleep(0.3)  # every join in place

    async def drain(ws: object) -> None:
        for _ in range(messages):
            await ws.recv()  # type: ignore[attr-defined]

    async def talk(ws: object) -> None:
        for n in range(messages):
            await ws.send(f"m{n}")  # type: ignore[attr-defined]

    talkers = rooms[:talking]
    readers = [asyncio.create_task(drain(ws)) for clients, _ in talkers for ws in clients]
    began = time.perf_counter()
    await asyncio.gather(*(talk(talker) for _, talker in talkers))
    await asyncio.wait_for(asyncio.gather(*readers), 300)
    elapsed = time.perf_counter() - began
    for clients, talker in rooms:
        for ws in [*clients, talker]:
            await ws.close()
    return members * messages * len(talkers) / elapsed, messages * len(talkers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the other checkout")
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--members", type=int, default=25)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--talking", type=int, default=0, help="rooms that talk (0: all)")
    args = parser.parse_args()
    talking = args.talking or args.gateways
    sides = [Side("this checkout", ROOT, args.gateways),
             Side("baseline", Path(args.baseline).resolve(), args.gateways)]
    rates: dict[str, list[float]] = {s.name: [] for s in sides}
    # CPU µs per broadcast: a gateway that holds the room, one that holds none of
    # the others' rooms (per room), the workers.
    costs: dict[str, dict[str, list[float]]] = {s.name: {} for s in sides}
    try:
        for rnd in range(args.rounds):
            for side in sides:
                before = side.cpu()
                rate, broadcasts = asyncio.run(one_round(side.ports, args.members,
                                                         args.messages, talking))
                after = side.cpu()
                rates[side.name].append(rate)
                for label in after:
                    spent = (after[label] - before[label]) * 1e6 / broadcasts
                    costs[side.name].setdefault(label, []).append(spent)
                print(f"round {rnd + 1} {side.name}: {rate:,.0f} delivered msg/s", file=sys.stderr)
    finally:
        for side in sides:
            side.stop()
    print(f"{args.gateways} gateways, a room of {args.members} members on each, "
          f"{args.messages} messages in each of {talking} rooms at once; {args.rounds} "
          f"rounds in turns, medians [min-max]\n")
    labels = [label for label in costs[sides[0].name] if label.startswith("gateway")]
    print("| side | delivered msg/s | CPU µs per broadcast: " +
          " | ".join(labels) + " | workers | coordinator |")
    print("|---|---:|" + "---:|" * (len(labels) + 2))
    for side in sides:
        values = rates[side.name]
        cells = [f"{statistics.median(costs[side.name][label]):.1f}"
                 for label in [*labels, "worker", "coordinator"]]
        print(f"| {side.name} | {statistics.median(values):,.0f} "
              f"[{min(values):,.0f}-{max(values):,.0f}] | " + " | ".join(cells) + " |")
    this, base = (statistics.median(rates[s.name]) for s in sides)
    print(f"\ndelivered msg/s, this checkout / baseline: {this / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
