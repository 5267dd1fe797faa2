"""Only members get in: every kind of outsider, tried with real processes and sockets.

Each outsider is a raw ZeroMQ socket speaking our wire format, as a script would:
with no key, or with a valid CURVE key that is not on the cluster's allow-list. Each
must get nothing (no request, no membership, no state update, no WebSocket client
reached) and have nothing it sends acted on, while the cluster serves on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from cluster.plumbing import wire
from cluster.plumbing.security import Curve, fingerprint, keygen
from tests.harness import Cluster, Proc, cluster, wait_for
from tests.httpclient import get
from tests.integration.test_observability import metrics_port, sample, scrape

APP = "tests.apps.state_app:app"
ROGUE_GRACE = 1.0  # how long an outsider is given to receive something it must not


@pytest.fixture(scope="module")
def secure() -> Iterator[tuple[Cluster, Proc]]:
    with cluster() as c:
        gw = c.gateway()
        c.worker(APP)
        yield c, gw


@pytest.fixture(scope="module")
def stranger_keys() -> Iterator[Curve]:
    """A valid key pair the cluster never heard of (and a coordinator.key beside it,
    as a stranger's own directory would have: the cluster's public key is public)."""
    directory = tempfile.mkdtemp(prefix="stranger-")
    keygen(directory, ["stranger"])
    try:
        yield _curve_with_server(Path(directory), "stranger")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _curve_with_server(directory: Path, name: str) -> Curve:
    # Curve wants a coordinator.key to exist; any public key does for a rogue.
    shutil.copy(directory / f"{name}.key", directory / "coordinator.key")
    return Curve(str(directory), name)


def port(gw: Proc) -> int:
    return int(gw.ready["port"])


def rogue(ctx: zmq.Context[Any], kind: int, endpoint: str, curve: Curve | None,
          server_key: bytes | None) -> zmq.Socket[Any]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None and server_key is not None:
        curve.client(sock, server_key)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def offer(sock: zmq.Socket[Any], frame: bytes) -> None:
    """Send if the socket will take it: a refused peer has no connection to queue on."""
    with contextlib.suppress(zmq.Again):
        sock.send(frame, zmq.NOBLOCK)


def received(sock: zmq.Socket[Any], seconds: float) -> list[bytes]:
    """Everything the socket got within `seconds` (the time an outsider is given)."""
    got: list[bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            got.extend(sock.recv_multipart())
    return got


def outsiders(stranger: Curve) -> list[tuple[str, Curve | None]]:
    return [("no key", None), ("a key not allowed", stranger)]


def test_a_rogue_worker_gets_no_request_and_serves_nobody(
        secure: tuple[Cluster, Proc], stranger_keys: Curve) -> None:
    c, gw = secure
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        for what, curve in outsiders(stranger_keys):
            sock = rogue(ctx, zmq.DEALER, gw.ready["endpoint"], curve,
                         c.public_key("gateway"))
            offer(sock, wire.encode_one(wire.HELLO, id=f"rogue-{what}", credit=1000))
            # While it waits with its credit, users' requests go to the real worker.
            for i in range(20):
                resp = get(port(gw), "/whoami", headers={"Cookie": f"session=secret{i}"})
                assert resp.status == 200, what
            assert received(sock, ROGUE_GRACE) == [], what
            offer(sock, wire.encode_one(wire.RESPONSE, id=1, more=False, status=200, head=b"",
                                      body=b"pwned"))
            assert b"pwned" not in get(port(gw), "/whoami").body
            sock.close()
        assert "rogue" not in gw.log()  # its hello never reached the dispatcher
    finally:
        ctx.destroy(linger=0)


def test_refusals_are_counted_and_a_refused_key_logged_once_per_address(
        secure: tuple[Cluster, Proc], stranger_keys: Curve) -> None:
    c, gw = secure
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        for _ in range(3):
            for curve in (None, stranger_keys):
                sock = rogue(ctx, zmq.DEALER, gw.ready["endpoint"], curve,
                             c.public_key("gateway"))
                offer(sock, wire.encode_one(wire.HELLO, id="rogue", credit=1))
                received(sock, 0.2)
                sock.close()
        text = wait_for(lambda: (t := scrape(metrics_port(gw.ready))) and
                        sample(t, "cluster_zmq_refused_total", reason="key_not_allowed") >= 3
                        and sample(t, "cluster_zmq_refused_total", reason="handshake") >= 3
                        and t, 5, "refusals counted")
        assert text
        mark = fingerprint(stranger_keys.public_key)
        log = gw.wait_log(f"its key {mark} is not allowed")
        # Three tries from three source ports: three addresses, one line each at most.
        assert 1 <= log.count(mark) <= 3
        assert "refused a ZeroMQ peer that has no valid CURVE key" in log
    finally:
        ctx.destroy(linger=0)


def test_a_rogue_member_gets_no_membership_and_writes_no_state(
        secure: tuple[Cluster, Proc], stranger_keys: Curve) -> None:
    c, gw = secure
    before = json.loads(get(port(gw), "/count").body)["keys"]
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        for what, curve in outsiders(stranger_keys):
            sock = rogue(ctx, zmq.DEALER, c.endpoint, curve, c.public_key("coordinator"))
            offer(sock, wire.encode_one(wire.REGISTER, id=f"rogue-{what}", role="gateway",
                                      info={"endpoint": "tcp://127.0.0.1:9", "key": "x"}))
            offer(sock, wire.encode_one(wire.SYNC, id=f"rogue-{what}"))
            offer(sock, wire.encode_one(wire.STATE_OP, id=f"rogue-{what}", rid=1,
                                      ops=[["set", "owned", "yes", 0], ["incr", "hits", 1000]]))
            offer(sock, wire.encode_one(wire.SNAPSHOT_REQUEST, id=f"rogue-{what}", rid=2))
            assert received(sock, ROGUE_GRACE) == [], what
            sock.close()
        assert "rogue" not in c.coordinator.log()
        # Nothing it sent was acted on: no such member, no such key.
        probe = c.probe()
        try:
            members = probe.wait_members(lambda ms: len(ms) >= 2, 5, "the real members")
            assert not any(str(m["id"]).startswith("rogue") for m in members)
        finally:
            probe.close()
        assert json.loads(get(port(gw), "/count").body)["keys"] == before
    finally:
        ctx.destroy(linger=0)


def test_a_rogue_subscriber_reads_no_state(secure: tuple[Cluster, Proc],
                                           stranger_keys: Curve) -> None:
    c, gw = secure
    pub_endpoint = _state_pub_endpoint(c)
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        socks = [rogue(ctx, zmq.SUB, pub_endpoint, curve, c.public_key("coordinator"))
                 for _, curve in outsiders(stranger_keys)]
        # A member's own subscription sees the writes; the outsiders see nothing.
        member = rogue(ctx, zmq.SUB, pub_endpoint, c.curve(), c.public_key("coordinator"))
        wait_for(lambda: get(port(gw), "/incr", method="POST").status == 200 and
                 member.poll(100), 5, "a member to see an update")
        for sock in socks:
            assert received(sock, 0.5) == []
    finally:
        ctx.destroy(linger=0)


def _state_pub_endpoint(c: Cluster) -> str:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = rogue(ctx, zmq.DEALER, c.endpoint, c.curve(), c.public_key("coordinator"))
    try:
        offer(sock, wire.encode_one(wire.SYNC, id="probe-pub"))
        assert sock.poll(5000)
        for msg in wire.decode_frame(sock.recv()):
            if msg["k"] == wire.MEMBERS:
                return str(msg["state"]["pub"])
        raise AssertionError("no MEMBERS answer")
    finally:
        ctx.destroy(linger=0)


def test_a_rogue_publisher_reaches_nobody(secure: tuple[Cluster, Proc],
                                          stranger_keys: Curve) -> None:
    from cluster.publisher import Publisher, PublisherError
    c, _gw = secure
    with pytest.raises(PublisherError, match="no answer from the coordinator"):
        Publisher(c.endpoint, timeout=1.0, keys=str(stranger_keys.directory),
                  key_name="stranger")
    with pytest.raises(PublisherError, match="--keys DIR is required"):
        Publisher(c.endpoint, timeout=1.0)
    with Publisher(c.endpoint, keys=c.keys) as pub:  # a member's key works
        assert pub.broadcast("nobody-here", "x") == 1


def test_keys_rotate_with_no_failed_request(tmp_path: Path) -> None:
    with cluster() as c:
        gw = c.gateway()
        old = c.worker(APP)
        failures: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                try:
                    status = get(port(gw), "/whoami", timeout=5).status
                except OSError as exc:
                    failures.append(repr(exc))
                    continue
                if status != 200:
                    failures.append(str(status))

        loader = threading.Thread(target=traffic, daemon=True)
        loader.start()
        try:
            # 1. Allow the new key: a file in the directory the gateways read.
            keygen(c.keys, ["worker-2027"])
            # 2. Restart the member with it: the new one first, then the old one goes.
            new = c.worker(APP, "--key-name", "worker-2027")
            wait_for(lambda: gw.log().count("connected with credit") >= 2, 5,
                     "the new worker linked")
            assert old.terminate() == 0
            # 3. Remove the old key: the next connection with it is refused.
            (Path(c.keys) / "worker.key").unlink()
            again = c.worker(APP, wait_ready=False)
            c.coordinator.wait_log("refused a ZeroMQ peer", timeout=10)
            assert again.popen.poll() is None  # it waits and retries; it gets nothing
            time.sleep(0.5)  # traffic keeps flowing through the rotation: measured here
        finally:
            stop.set()
            loader.join(10)
        assert failures == []
        assert new.popen.poll() is None
        again.kill()


def test_insecure_is_explicit_and_warned() -> None:
    with cluster() as c:
        # A plaintext gateway cannot join a secure coordinator: it gets no answer.
        lone = c.gateway("--insecure", "--start-timeout", "1", wait_ready=False)
        assert lone.popen.wait(15) == 1
        assert "--insecure: ZeroMQ links are plaintext" in lone.log()
        assert "no answer from the coordinator" in lone.log()


def test_keygen_writes_private_pairs_and_keeps_existing_ones(tmp_path: Path) -> None:
    from tests.integration.test_cli import cluster_cmd
    directory = tmp_path / "keys"
    first = cluster_cmd("keygen", str(directory), "alpha", "beta")
    assert first.returncode == 0 and first.stdout.count("(written)") == 2
    secret = (directory / "alpha.key_secret").read_bytes()
    assert os.stat(directory / "alpha.key_secret").st_mode & 0o077 == 0
    assert os.stat(directory).st_mode & 0o077 == 0
    again = cluster_cmd("keygen", str(directory), "alpha")
    assert again.returncode == 0 and "(kept)" in again.stdout
    assert (directory / "alpha.key_secret").read_bytes() == secret
    bad = cluster_cmd("keygen", str(directory), "../escape")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1



def test_a_process_waits_for_keys_being_written_then_starts(tmp_path: Path) -> None:
    """As in a compose project, where the one-shot keys service may still be at work:
    a process whose pair is missing waits (up to --start-timeout), then starts."""
    with cluster() as c:
        gw = c.gateway()
        later = tmp_path / "keys"
        later.mkdir()
        worker = c.worker("tests.apps.handlers:app", env={"CLUSTER_KEYS": str(later)},
                          wait_ready=False)
        worker.wait_log("waiting up to")
        for name in ("coordinator.key", "gateway.key", "worker.key", "worker.key_secret",
                     "probe.key"):
            shutil.copy(Path(c.keys) / name, later / name)
        wait_for(lambda: get(int(gw.ready["port"]), "/pid").status == 200, 15,
                 "the worker serving once its keys are there")
        from tests.integration.test_cli import cluster_cmd
        empty = tmp_path / "never"
        empty.mkdir()
        result = cluster_cmd("worker", "--handler", "tests.apps.handlers:app", "--keys",
                             str(empty), "--coordinator", c.endpoint, "--start-timeout", "1")
        assert result.returncode == 2 and "cannot load" in result.stderr, result.stderr
