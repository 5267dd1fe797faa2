"""Discovery through the coordinator: scaling by starting a process, expiry,
coordinator restarts, and malformed frames at every kind of process."""

from __future__ import annotations

import json
import time

import pytest
import zmq

from cluster.plumbing import wire
from tests.harness import cluster, wait_for
from tests.httpclient import get

APP = "tests.apps.handlers:app"


def pid_served(port: int) -> int:
    return int(get(port, "/pid").header("x-pid") or 0)


def test_a_worker_started_later_gets_requests_within_2s() -> None:
    with cluster() as c:
        gw = c.gateway()
        c.worker(APP)
        port = int(gw.ready["port"])
        start = time.monotonic()
        late = c.worker(APP, wait_ready=False)
        wait_for(lambda: pid_served(port) == late.pid, 2.0, "the new worker to serve")
        assert time.monotonic() - start < 2.0


def test_a_gateway_started_later_is_served_by_running_workers() -> None:
    with cluster() as c:
        c.gateway()
        worker = c.worker(APP)
        start = time.monotonic()
        late = c.gateway()
        port = int(late.ready["port"])
        wait_for(lambda: get(port, "/pid").status == 200, 2.0, "the new gateway to serve")
        assert time.monotonic() - start < 2.0
        assert pid_served(port) == worker.pid


@pytest.mark.slow
def test_dead_members_leave_membership_within_3_intervals() -> None:
    # The default heartbeat interval, 1 s, everywhere.
    with cluster(interval=[]) as c:
        gw = c.gateway()
        worker = c.worker(APP)
        probe = c.probe()
        try:
            ids = {gw.ready["id"], worker.ready["id"]}
            probe.wait_members(lambda ms: ids <= {m["id"] for m in ms}, 5, "both members")
            for victim in (worker, gw):
                victim.kill()
                killed = time.monotonic()
                probe.wait_members(lambda ms, v=victim: v.ready["id"] not in
                                   {m["id"] for m in ms}, 5, f"{victim.role} to leave")
                # 3 intervals of silence, counted from its last heartbeat (at most one
                # interval before the kill), seen by a sweep every quarter interval.
                assert time.monotonic() - killed < 3.0 + 0.25 + 0.2
        finally:
            probe.close()


def test_membership_describes_every_member() -> None:
    with cluster() as c:
        gw = c.gateway()
        worker = c.worker(APP)
        probe = c.probe()
        try:
            members = probe.wait_members(lambda ms: len(ms) >= 3, 5, "three members")
            by_id = {m["id"]: m for m in members}
            assert by_id[gw.ready["id"]]["role"] == "gateway"
            assert by_id[gw.ready["id"]]["endpoint"] == gw.ready["endpoint"]
            assert by_id[worker.ready["id"]]["handler"] == APP
        finally:
            probe.close()


def test_serving_survives_the_coordinator_and_everyone_re_registers() -> None:
    with cluster() as c:
        gw = c.gateway()
        worker = c.worker(APP)
        port = int(gw.ready["port"])
        c.coordinator.kill()
        assert get(port, "/pid").status == 200  # membership known: still serving
        wait_for(lambda: "coordinator silent" in worker.log(), 5, "the worker to notice")
        assert get(port, "/pid").status == 200
        # A new coordinator on the same endpoint knows nobody; members come back by
        # themselves.
        c.start("coordinator", "--coordinator-bind", c.endpoint)
        probe = c.probe()
        try:
            ids = {gw.ready["id"], worker.ready["id"]}
            probe.wait_members(lambda ms: ids <= {m["id"] for m in ms}, 5, "re-registration")
        finally:
            probe.close()
        assert get(port, "/pid").status == 200
        # Membership churn while everyone re-registers must not cut worker links.
        assert "dropped from dispatch" not in gw.log()
        assert "left the cluster" not in worker.log()


def test_malformed_frames_are_dropped_counted_and_logged_everywhere() -> None:
    with cluster() as c:
        gw = c.gateway()
        port = int(gw.ready["port"])
        ctx = zmq.Context()
        try:
            # 1. At the coordinator.
            curve = c.curve()
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            curve.coordinator_client(sock)
            sock.connect(c.endpoint)
            sock.send(b"\xc1 not msgpack")
            sock.send(wire.encode_one("unknown-kind"))
            c.coordinator.wait_log("dropped a malformed frame")
            probe = c.probe()
            probe.wait_members(lambda ms: len(ms) >= 2, 5, "the coordinator still working")
            probe.close()

            # 2. At the gateway's dispatch socket.
            sock2 = ctx.socket(zmq.DEALER)
            sock2.setsockopt(zmq.LINGER, 0)
            curve.client(sock2, c.public_key("gateway"))
            sock2.connect(gw.ready["endpoint"])
            sock2.send(b"\x93garbage")
            sock2.send_multipart([b"a", b"b"])
            gw.wait_log("dropped a malformed frame")

            # 3. At a worker: pose as a gateway it will connect to.
            fake = ctx.socket(zmq.ROUTER)
            fake.setsockopt(zmq.LINGER, 0)
            curve.server(fake)  # with the probe's key, which every member allows
            fake_port = fake.bind_to_random_port("tcp://127.0.0.1")
            fake_probe = c.probe(role="gateway",
                                 info={"endpoint": f"tcp://127.0.0.1:{fake_port}",
                                       "key": curve.public_key.decode()})
            worker = c.worker(APP, wait_ready=False)
            deadline = time.monotonic() + 5
            while not fake.poll(50):  # heartbeating, or the fake gateway expires
                assert time.monotonic() < deadline, "no hello at the fake gateway"
                fake_probe.poll(0.01)
            ident, _hello = fake.recv_multipart()
            fake.send_multipart([ident, b"\xc1junk"])
            fake.send_multipart([ident, wire.encode_one(wire.REQUEST, id=99, conn=1)])
            fake.send_multipart([ident, wire.encode_one(
                wire.REQUEST, id=100, conn=1, method="GET", target="/items/5", version="1.1",
                headers=[], body=b"", addr=["127.0.0.1", 1])])
            deadline = time.monotonic() + 5
            answer = None
            while answer is None and time.monotonic() < deadline:
                if fake.poll(200):
                    for msg in wire.decode_frame(fake.recv_multipart()[1]):
                        if msg["k"] == wire.RESPONSE and msg["id"] == 100:
                            answer = msg
                fake_probe.poll(0.01)
            assert answer is not None, worker.log()
            assert json.loads(answer["body"])["id"] == 5
            assert worker.log().count("dropped a malformed frame") == 2
            fake_probe.close()
            # And the real path still works end to end.
            wait_for(lambda: get(port, "/items/1").status == 200, 5, "real traffic")
            for proc in (c.coordinator, gw, worker):
                assert "Traceback" not in proc.log()
                assert proc.popen.poll() is None
        finally:
            ctx.destroy(linger=0)




def test_valid_envelopes_of_kinds_a_member_does_not_send_are_ignored() -> None:
    # These kinds carry no "id": the coordinator once raised KeyError on them.
    with cluster() as c:
        ctx = zmq.Context()
        try:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            c.curve().coordinator_client(sock)
            sock.connect(c.endpoint)
            sock.send(wire.encode([wire.envelope(wire.UPDATE, epoch="e", seq=1, changes=[]),
                                   wire.envelope(wire.MEMBERS, seq=1, members=[]),
                                   wire.envelope(wire.WHO)]))
            c.coordinator.wait_log("unexpected who from a member; ignored")
            probe = c.probe()
            probe.wait_members(lambda ms: len(ms) >= 1, 5, "the coordinator still working")
            probe.close()
            assert "Traceback" not in c.coordinator.log()
        finally:
            ctx.destroy(linger=0)
