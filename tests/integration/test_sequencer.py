"""The state sequencer on etcd, with real processes on one etcd member: one gateway
is elected and commits every worker's state writes; when it dies or stops, another
takes over, and a stopped one that comes back commits nothing more (its fence).
Every time, the counter lies between the acknowledged increments and those plus
the unanswered ones: nothing acknowledged is lost, nothing is applied twice."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import Cluster, Proc, cluster, solo_etcd, threads_running, wait_for
from tests.integration.test_deploy import http
from tests.integration.test_observability import metrics_port, sample, scrape

pytestmark = pytest.mark.timeout(120)

APP = "tests.apps.state_app:app"


@dataclass
class Counting:
    """Clients incrementing one counter through the given gateway ports."""

    ports: list[int]
    acked: int = 0
    unknown: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, port: int) -> None:
        while not self.stop.is_set():
            try:
                status = http(f"http://127.0.0.1:{port}/incr", "POST", timeout=10)[0]
            except OSError:
                status = 0
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 200:
                    self.acked += 1
                else:
                    self.unknown += 1  # it may or may not have been applied

    @contextmanager
    def running(self, per_port: int = 3) -> Iterator[Counting]:
        with threads_running([(self.run, (port,)) for port in self.ports
                              for _ in range(per_port)], self.stop):
            yield self

    def check(self, port: int) -> int:
        status, body = http(f"http://127.0.0.1:{port}/incr", "POST")
        assert status == 200, body
        value = int(json.loads(body)["n"]) - 1  # the read itself added one
        assert self.acked <= value <= self.acked + self.unknown, \
            (value, self.acked, self.unknown, self.statuses)
        return value


def is_sequencer(gateway: Proc) -> bool:
    text = scrape(metrics_port(gateway.ready))
    return "\ncluster_gateway_state_sequencer " in text and \
        sample(text, "cluster_gateway_state_sequencer") == 1


def sequenced(worker: Proc) -> float:
    return sample(scrape(metrics_port(worker.ready)), "cluster_worker_state_sequenced_total")


@contextmanager
def on_etcd(tmp_path: Path, *gateway_flags: str, worker_flags: tuple[str, ...] = ()
            ) -> Iterator[tuple[Cluster, list[Proc], list[Proc]]]:
    with solo_etcd(tmp_path / "etcd") as url, cluster(backend=f"{url}/seq") as c:
        flags = ["--metrics-port", "0", *gateway_flags]
        gateways = [c.gateway(*flags) for _ in range(2)]
        workers = [c.worker(APP, "--metrics-port", "0", *worker_flags) for _ in range(2)]
        yield c, gateways, workers


def test_one_gateway_commits_every_workers_writes(tmp_path: Path) -> None:
    with on_etcd(tmp_path) as (_c, gateways, workers):
        wait_for(lambda: sum(is_sequencer(g) for g in gateways) == 1, 15, "one sequencer")
        load = Counting([int(g.ready["port"]) for g in gateways])
        with load.running():
            wait_for(lambda: all(sequenced(w) >= 20 for w in workers), 20,
                     "both workers' writes through the sequencer")
        assert load.statuses == {200: load.acked}, load.statuses
        assert load.check(int(gateways[0].ready["port"])) == load.acked  # exact


def test_without_a_sequencer_each_worker_commits_its_own(tmp_path: Path) -> None:
    with on_etcd(tmp_path, "--no-state-sequencer") as (_c, gateways, workers):
        load = Counting([int(g.ready["port"]) for g in gateways])
        with load.running():
            wait_for(lambda: load.acked >= 50, 20, "increments acknowledged")
        assert not any(is_sequencer(g) for g in gateways)
        assert all(sequenced(w) == 0 for w in workers)
        assert load.check(int(gateways[0].ready["port"])) == load.acked


def test_the_batches_of_one_turn_go_together_and_each_stands_alone(tmp_path: Path) -> None:
    """A handler that makes two increments at once: they reach the sequencer in one
    message. One of them on a key that holds a word is refused (400's reason), and the
    other is committed all the same."""
    with on_etcd(tmp_path) as (_c, gateways, workers):
        wait_for(lambda: all("state writes go through the sequencer" in w.log()
                             for w in workers), 15, "the workers told of the sequencer")
        leader = next(g for g in gateways if is_sequencer(g))
        port = int(leader.ready["port"])
        status, _ = http(f"http://127.0.0.1:{port}/kv/word", "PUT", b"text")
        assert status == 200
        before = scrape(metrics_port(leader.ready))
        for n in range(1, 6):
            status, body = http(f"http://127.0.0.1:{port}/together/both/word", "POST")
            assert status == 200, body
            answer = json.loads(body)
            assert answer["counted"] == n and answer["other"] is None, answer
            assert "incr" in answer["refused"], answer
        status, body = http(f"http://127.0.0.1:{port}/together/both/twin", "POST")
        assert status == 200 and json.loads(body) == {"counted": 6, "other": 1,
                                                      "refused": None}, body
        after = scrape(metrics_port(leader.ready))

        def grew(name: str) -> float:
            return sample(after, name) - sample(before, name)

        assert grew("cluster_gateway_state_sequencer_batches_total") == 12
        assert grew("cluster_gateway_state_sequencer_messages_total") == 6


@pytest.mark.parametrize("committer", ["sequencer", "worker"])
def test_max_keys_holds_on_etcd(tmp_path: Path, committer: str) -> None:
    """--max-keys, as on the coordinator: a new key past it is refused (nothing
    written), a changed one is not, and a deleted one makes room. Checked by the
    sequencer (from its count of etcd's keys) or by a worker (from its replica)."""
    limit = ("--max-keys", "4")
    gateway_flags = (*limit, *(() if committer == "sequencer" else ("--no-state-sequencer",)))
    with on_etcd(tmp_path, *gateway_flags, worker_flags=limit) as (_c, gateways, workers):
        if committer == "sequencer":
            wait_for(lambda: all("state writes go through the sequencer" in w.log()
                                 for w in workers), 15, "the workers told of the sequencer")
        port = int(gateways[0].ready["port"])

        def put(key: str) -> tuple[int, bytes]:
            return http(f"http://127.0.0.1:{port}/kv/{key}", "PUT", b"v")

        for n in range(4):
            assert put(f"k{n}")[0] == 200
        status, body = put("k4")
        assert status == 400 and b"at most 4 keys" in body, (status, body)
        assert put("k0")[0] == 200  # the same value again: no new key, nothing written
        assert http(f"http://127.0.0.1:{port}/kv/k1", "DELETE")[0] == 200
        assert put("k4")[0] == 200
        status, body = put("k5")
        assert status == 400, (status, body)
        keys = json.loads(http(f"http://127.0.0.1:{port}/kv-keys")[1])
        assert keys == ["k0", "k2", "k3", "k4"], keys
        # The 7 writes that were committed went through the sequencer, or none did.
        assert sum(sequenced(w) for w in workers) == (7 if committer == "sequencer" else 0)


@pytest.mark.parametrize("fault", ["kill", "stop"])
@pytest.mark.slow
def test_another_gateway_takes_over_and_a_stale_one_commits_nothing(
        tmp_path: Path, fault: str) -> None:
    """The sequencer is killed (-9), or stopped past its lease and then continued
    (it wakes up believing it leads: its transactions fail their fence)."""
    with on_etcd(tmp_path) as (_c, gateways, workers):
        wait_for(lambda: sum(is_sequencer(g) for g in gateways) == 1, 15, "one sequencer")
        leader = next(g for g in gateways if is_sequencer(g))
        other = next(g for g in gateways if g is not leader)
        load = Counting([int(other.ready["port"])])
        with load.running(per_port=6):
            wait_for(lambda: load.acked >= 30, 20, "increments through the sequencer")
            if fault == "kill":
                leader.kill()
            else:
                leader.popen.send_signal(signal.SIGSTOP)
            wait_for(lambda: is_sequencer(other), 20, "the other gateway elected")
            before = load.acked
            wait_for(lambda: load.acked >= before + 30, 20, "increments after the change")
            if fault == "stop":
                leader.popen.send_signal(signal.SIGCONT)
                try:
                    wait_for(lambda: not is_sequencer(leader), 20, "the old one steps down")
                except AssertionError:
                    raise AssertionError(leader.log()[-3000:]) from None
                before = load.acked
                wait_for(lambda: load.acked >= before + 30, 20, "increments after it woke")
        assert set(load.statuses) <= {200, 503}, load.statuses
        load.check(int(other.ready["port"]))
        assert "this gateway is the state sequencer" in other.log()
        assert all(sequenced(w) > 0 for w in workers)
