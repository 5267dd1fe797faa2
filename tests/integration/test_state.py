"""Shared state across real processes: atomicity, durability, snapshots, outages."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Cluster, Proc, cluster, wait_for
from tests.httpclient import Conn, Response, get

STATE_APP = "tests.apps.state_app:app"


def body(resp: Response) -> dict:  # type: ignore[type-arg]
    return json.loads(resp.body)  # type: ignore[no-any-return]


def test_2000_concurrent_increments_over_2_gateways_and_3_workers() -> None:
    with cluster() as c:
        gateways = [c.gateway(), c.gateway()]
        for _ in range(3):
            c.worker(STATE_APP)
        ports = [int(g.ready["port"]) for g in gateways]
        wait_for(lambda: all(get(p, "/count").status == 200 for p in ports), 5, "serving")
        errors: list[str] = []

        def client(i: int) -> None:
            conn = Conn(ports[i % 2], timeout=30)
            for _ in range(100):
                conn.send(b"POST /incr HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                resp = conn.read_response()
                if resp.status != 200:
                    errors.append(f"{resp.status} {resp.body!r}")
            conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        resp = get(ports[0], "/kv/hits")
        # Every replica converges on the same final value.
        for port in ports:
            wait_for(lambda p=port: body(get(p, "/kv/hits")).get("value") == 2000, 5,
                     "every replica at 2000")
        assert body(resp)["value"] == 2000


@pytest.mark.parametrize("fsync", ["batch", "always"])
def test_kill_9_coordinator_loses_no_acknowledged_write(tmp_path: Path, fsync: str) -> None:
    data_dir = tmp_path / "data"
    with cluster() as c:
        c.coordinator.terminate()
        coord = c.start("coordinator", "--coordinator-bind", c.endpoint, "--data-dir",
                        str(data_dir), "--fsync", fsync)
        gw = c.gateway()
        c.worker(STATE_APP, "--state-timeout", "1")
        c.worker(STATE_APP, "--state-timeout", "1")
        port = int(gw.ready["port"])
        acked: list[int] = []
        attempted: list[int] = []
        stop = threading.Event()

        def writer(offset: int) -> None:
            conn: Conn | None = None
            n = offset
            while not stop.is_set():
                n += 4
                attempted.append(n)
                try:
                    conn = conn or Conn(port, timeout=10)
                    conn.send(b"PUT /pair/%d HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                              % n)
                    if conn.read_response().status == 200:
                        acked.append(n)
                except (OSError, AssertionError):
                    conn = None
            if conn is not None:
                conn.close()

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) > 200, 20, "writes under way")
        coord.kill()  # kill -9, with writes in flight
        stop.set()
        for t in threads:
            t.join(30)
        assert acked
        c.start("coordinator", "--coordinator-bind", c.endpoint, "--data-dir", str(data_dir),
                "--fsync", fsync)
        # Everyone re-registers and re-syncs by itself; then every acked pair is there.
        def synced() -> dict | None:  # type: ignore[type-arg]
            pairs = body(get(port, "/pairs"))
            return pairs if set(acked) <= set(pairs["a"]) else None
        pairs = wait_for(synced, 10, "the replicas to hold every acknowledged write")
        assert set(acked) <= set(pairs["b"])
        assert pairs["a"] == pairs["b"]  # never half a batch
        assert set(pairs["a"]) <= set(attempted)


def test_restart_with_a_damaged_log_keeps_what_precedes_the_damage(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with cluster() as c:
        c.coordinator.terminate()
        coord = c.start("coordinator", "--coordinator-bind", c.endpoint, "--data-dir",
                        str(data_dir))
        gw = c.gateway()
        c.worker(STATE_APP)
        port = int(gw.ready["port"])
        for i in range(10):
            assert get(port, f"/pair/{i}", method="PUT").status == 200
        coord.terminate()
        log_path = data_dir / "state.log"
        log_path.write_bytes(log_path.read_bytes()[:-5])  # a torn last record
        coord2 = c.start("coordinator", "--coordinator-bind", c.endpoint, "--data-dir",
                         str(data_dir))
        assert "cut a torn tail" in coord2.log()
        def recovered() -> dict | None:  # type: ignore[type-arg]
            resp = get(port, "/pairs")
            assert resp.status == 200, gw.log()
            pairs = body(resp)
            return pairs if pairs["a"] == list(range(9)) else None
        pairs = wait_for(recovered, 10, "the replica to re-sync with the recovered store")
        assert pairs["b"] == list(range(9))


def test_a_flipped_byte_mid_log_stops_the_coordinator_until_repaired(tmp_path: Path) -> None:
    """200 acknowledged increments, one byte flipped in the middle of the log: the
    coordinator refuses to start (it served 104 before, with one WARNING), naming the
    file, the offset and the repair; `cluster repair` cuts there and says so."""
    import subprocess
    import sys

    from cluster.coordinator.wal import HEADER
    data_dir = tmp_path / "data"
    with cluster() as c:
        c.coordinator.terminate()
        coord = c.start("coordinator", "--coordinator-bind", c.endpoint, "--data-dir",
                        str(data_dir))
        port = int(c.gateway().ready["port"])
        c.worker(STATE_APP)
        conn = Conn(port, timeout=10)
        for i in range(1, 201):
            conn.send(b"POST /incr HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            assert body(conn.read_response())["n"] == i
        conn.close()
        assert coord.terminate() == 0
        log_path = data_dir / "state.log"
        data = bytearray(log_path.read_bytes())
        offset, index = 0, 0
        while index < 100:  # to the 101st record
            offset += HEADER.size + HEADER.unpack_from(data, offset)[0]
            index += 1
        data[offset + HEADER.size + 1] ^= 0x01
        log_path.write_bytes(bytes(data))

        refused = c.start("coordinator", "--coordinator-bind", c.endpoint, "--data-dir",
                          str(data_dir), wait_ready=False)
        assert refused.popen.wait(15) == 1
        text = refused.log()
        assert f"{log_path} is damaged at byte {offset}" in text, text
        assert "100 good records before it, 99 after it" in text
        assert f"cluster repair --data-dir {data_dir}" in text
        assert "Traceback" not in text
        assert log_path.read_bytes() == bytes(data)  # nothing cut in silence

        repaired = subprocess.run([sys.executable, "-m", "cluster", "repair", "--data-dir",
                                   str(data_dir)], capture_output=True, text=True, timeout=30)
        assert repaired.returncode == 0, repaired.stderr
        assert f"at byte {offset}" in repaired.stdout
        assert "100 records kept, 100 dropped" in repaired.stdout
        c.start("coordinator", "--coordinator-bind", c.endpoint, "--data-dir", str(data_dir))
        # Read until the worker's replica holds the repaired store. Not by incrementing:
        # an increment tried while the worker re-syncs is applied and still answered
        # 503 (it may not read its write in time), and the next would then say 102.
        def kept() -> bool:
            resp = get(port, "/kv/hits")
            return resp.status == 200 and body(resp)["value"] == 100
        wait_for(kept, 10, "the repaired state to serve the increments it kept")
        resp = get(port, "/incr", method="POST")
        assert resp.status == 200 and body(resp)["n"] == 101
        assert (data_dir / "state.log").stat().st_mode & 0o777 == 0o600
        assert data_dir.stat().st_mode & 0o777 == 0o700


def test_a_late_worker_gets_10000_keys_through_the_snapshot() -> None:
    with cluster() as c:
        gw = c.gateway()
        first = c.worker(STATE_APP)
        port = int(gw.ready["port"])
        for start in range(0, 10_000, 2_500):
            assert get(port, f"/bulk/{start}/2500", method="PUT").status == 200
        first.terminate()
        late = c.worker(STATE_APP)
        assert "state snapshot: 10000 keys" in late.log()
        resp = body(get(port, "/count"))
        assert resp == {"keys": 10_000, "pid": late.pid}


@pytest.fixture(scope="module")
def state_cluster() -> Iterator[tuple[Cluster, Proc]]:
    with cluster() as c:
        gw = c.gateway()
        c.worker(STATE_APP, "--state-timeout", "1")
        c.worker(STATE_APP, "--state-timeout", "1")
        yield c, gw


def test_a_write_on_one_worker_is_seen_on_the_other(state_cluster: tuple[Cluster, Proc]
                                                    ) -> None:
    port = int(state_cluster[1].ready["port"])
    writer = body(get(port, "/kv/shared", method="PUT", body=b"v1"))["pid"]
    start = time.monotonic()
    # Requests rotate over both workers: both must answer with the value.
    seen = set()
    while len(seen) < 2:
        resp = body(get(port, "/kv/shared"))
        assert resp.get("value") == "v1" or time.monotonic() - start < 1.0
        if resp.get("value") == "v1":
            seen.add(resp["pid"])
        assert time.monotonic() - start < 5
    assert writer in seen


def test_ttl_expires_everywhere(state_cluster: tuple[Cluster, Proc]) -> None:
    port = int(state_cluster[1].ready["port"])
    assert get(port, "/kv/brief?ttl=0.5", method="PUT", body=b"x").status == 200
    assert get(port, "/kv/brief").status == 200
    wait_for(lambda: all(get(port, "/kv/brief").status == 404 for _ in range(4)), 5,
             "the key to expire on every replica")


def test_value_over_max_value_is_refused_with_its_reason() -> None:
    with cluster() as c:
        c.coordinator.terminate()
        c.start("coordinator", "--coordinator-bind", c.endpoint, "--max-value", "100",
                "--max-keys", "3")
        gw = c.gateway()
        c.worker(STATE_APP)
        port = int(gw.ready["port"])
        resp = get(port, "/kv/v", method="PUT", body=b"z" * 200)
        assert resp.status == 400 and "over the 100 limit" in body(resp)["error"]
        for key in ("a", "b", "c"):
            assert get(port, f"/kv/{key}", method="PUT", body=b"1").status == 200
        resp = get(port, "/kv/d", method="PUT", body=b"1")
        assert resp.status == 400 and "at most 3 keys" in body(resp)["error"]


def test_framework_keys(state_cluster: tuple[Cluster, Proc]) -> None:
    _, gw = state_cluster
    port = int(gw.ready["port"])
    who = body(get(port, "/whoami"))
    assert who["worker"].startswith("wk-") and len(who["workers"]) == 2
    assert who["gateways"] == [gw.ready["id"]]
    assert get(port, "/readonly", method="PUT").status == 500


def test_seed_style_returned_dict() -> None:
    with cluster() as c:
        gw = c.gateway()
        c.worker("tests.apps.state_app:seed_fun")
        port = int(gw.ready["port"])
        assert [body(get(port, "/"))["visits"] for _ in range(3)] == [1, 2, 3]


def test_a_sync_handler_waiting_for_its_write_lends_its_thread_slot() -> None:
    """--threads 1: while a sync handler waits for its commit (the coordinator is
    stopped), the next sync request runs on a thread the pool starts for it; the
    write is acknowledged once the coordinator runs again."""
    from tests.integration.test_observability import metrics_port, sample, scrape

    # Heartbeats far apart: the stop below must not look like the coordinator's death.
    with cluster(interval=["--heartbeat-interval", "5"]) as c:
        gw = c.gateway()
        worker = c.worker(STATE_APP, "--threads", "1", "--state-timeout", "60")
        port, metrics = int(gw.ready["port"]), metrics_port(worker.ready)
        wait_for(lambda: get(port, "/count").status == 200, 10, "serving")
        answers: list[Response] = []
        writer = threading.Thread(target=lambda: answers.append(
            get(port, "/incr", method="POST", timeout=60)))
        os.kill(c.coordinator.pid, signal.SIGSTOP)
        try:
            writer.start()
            wait_for(lambda: sample(scrape(metrics),
                                    "cluster_worker_handler_threads_waiting") == 1,
                     10, "the write to wait for its commit")
            assert get(port, "/count").status == 200  # a sync handler, on the lent slot
            assert sample(scrape(metrics), "cluster_worker_handler_threads") == 2
        finally:
            os.kill(c.coordinator.pid, signal.SIGCONT)
        writer.join(60)
        assert [(r.status, body(r)) for r in answers] == [(200, {"n": 1})]
        assert sample(scrape(metrics), "cluster_worker_handler_threads_waiting") == 0


def test_coordinator_down_reads_work_writes_503_then_recovery() -> None:
    with cluster() as c:
        gw = c.gateway()
        worker = c.worker(STATE_APP, "--state-timeout", "1")
        port = int(gw.ready["port"])
        assert get(port, "/kv/k", method="PUT", body=b"before").status == 200
        c.coordinator.kill()
        wait_for(lambda: "coordinator silent" in worker.log(), 5, "the worker to notice")
        assert body(get(port, "/kv/k"))["value"] == "before"  # reads from the replica
        resp = get(port, "/kv/k", method="PUT", body=b"during")
        assert resp.status == 503 and resp.header("retry-after") == "1"
        assert "shared state unavailable" in worker.log()
        c.start("coordinator", "--coordinator-bind", c.endpoint)
        # A coordinator without a data dir starts a new history (epoch): replicas
        # re-sync to it by themselves, and writes work again.
        wait_for(lambda: get(port, "/kv/k", method="PUT", body=b"after").status == 200, 10,
                 "writes to work again")
        assert body(get(port, "/kv/k"))["value"] == "after"
