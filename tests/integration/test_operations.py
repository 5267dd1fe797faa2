"""Running it in production: readiness, rolling restarts, --reload, draining, hung
children, the connection limit. Real processes, real signals, real load (wrk)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.harness import ROOT, cluster, log_file, wait_for
from tests.httpclient import Conn, get
from tests.integration.test_cli import _status, alive, cluster_run, ports_of
from tests.integration.test_deploy import free_port

APP = "tests.apps.handlers:app"
WS_APP = "tests.apps.ws_app:app"


def probe(target: str, path: str) -> tuple[int, dict[str, Any]]:
    port = target.rpartition(":")[2]
    response = get(int(port), path)
    return response.status, json.loads(response.body)


def pid_served(port: int) -> int:
    return int(get(port, "/pid").header("x-pid") or 0)


# -- readiness and liveness ----------------------------------------------------------

def test_every_process_answers_ready_and_live() -> None:
    with cluster() as c:
        coordinator = c.coordinator.ready["metrics"]
        assert probe(coordinator, "/ready") == (200, {"ready": True, "log_open": True,
                                                      "writable": True})
        gw = c.gateway()
        status, body = probe(gw.ready["metrics"], "/ready")
        assert (status, body["workers"]) == (503, 0), body  # no worker yet
        status, body = probe(gw.ready["metrics"], "/live")
        assert status == 200 and body["pid"] == gw.pid
        worker = c.worker(APP)
        status, body = probe(worker.ready["metrics"], "/ready")
        assert status == 200 and body["state_synced"] and body["welcomed_by"] == 1, body
        wait_for(lambda: probe(gw.ready["metrics"], "/ready")[0] == 200, 5, "gateway ready")
        assert probe(worker.ready["metrics"], "/live")[0] == 200


def test_the_first_requests_after_the_port_accepts_are_served() -> None:
    """`cluster run`: the gateway opens its port only once a worker is linked."""
    port = free_port()
    popen = subprocess.Popen(
        [sys.executable, "-m", "cluster", "run", "--handler", APP, "--port", str(port),
         "--heartbeat-interval", "0.25"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def accepts() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(accepts, 30, "the port to accept")
        statuses = [get(port, "/pid").status for _ in range(30)]
        assert statuses == [200] * 30
    finally:
        popen.send_signal(signal.SIGTERM)
        popen.wait(30)


# -- rolling restart -------------------------------------------------------------------

def wrk(port: int, seconds: int, connections: int = 16) -> subprocess.Popen[str]:
    return subprocess.Popen(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s",
                             f"http://127.0.0.1:{port}/pid"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wrk_result(run: subprocess.Popen[str]) -> tuple[int, str]:
    """(requests, the whole report); asserts no failed request and no socket error."""
    out, _ = run.communicate(timeout=60)
    assert "Socket errors" not in out, out
    assert "Non-2xx" not in out, out
    return int(re.search(r"(\d+) requests in", out).group(1)), out  # type: ignore[union-attr]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make test "
                    "installs it)")
@pytest.mark.slow
def test_sighup_replaces_every_worker_without_a_failed_request() -> None:
    with cluster_run("--workers", "2") as run:
        port = ports_of(run.banner)[0]
        before = run.pids("worker-[12]")
        load = wrk(port, 6)
        time.sleep(1.0)  # traffic flowing before the restart begins
        run.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: "rolling restart done: 2 workers replaced" in run.log(), 20,
                 "the rolling restart to finish")
        requests, report = wrk_result(load)
        assert requests > 1000, report
        after = run.pids("worker-[12]")[2:]
        assert len(after) == 2 and not set(after) & set(before)
        assert not any(alive(pid) for pid in before)
        served = {pid_served(port) for _ in range(20)}
        assert served <= set(after) and served


def test_a_draining_worker_closes_its_websockets_with_1012_and_clients_reconnect() -> None:
    with cluster() as c:
        gw = c.gateway()
        first = c.worker(WS_APP)
        port = int(gw.ready["port"])
        clients = [ws_connect(f"ws://127.0.0.1:{port}/echo", legacy=True) for _ in range(4)]
        for client in clients:
            client.send("whoami")
            assert json.loads(client.recv(5))["pid"] == first.pid
        second = c.worker(WS_APP)
        first.popen.send_signal(signal.SIGTERM)
        for client in clients:
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert first.popen.wait(15) == 0
        again = ws_connect(f"ws://127.0.0.1:{port}/echo", legacy=True)
        again.send("whoami")
        assert json.loads(again.recv(5))["pid"] == second.pid
        again.close()


# -- --reload ------------------------------------------------------------------------

def test_reload_rolls_the_workers_when_a_python_file_changes() -> None:
    root = Path(tempfile.mkdtemp(prefix="cluster-reload-"))
    package = root / "reloadme"
    package.mkdir()
    (package / "__init__.py").write_text("")
    handler = package / "app.py"
    handler.write_text("def fun(req, state):\n    return {'body': 'one'}, state\n")
    env = {"PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    try:
        with cluster_run("--reload", "--workers", "2", handler="reloadme.app:fun",
                         env=env) as run:
            port = ports_of(run.banner)[0]
            assert get(port, "/").body == b"one"
            handler.write_text("def fun(req, state):\n    return {'body': 'two'}, state\n")
            wait_for(lambda: "rolling restart done: 2 workers replaced" in run.log(), 20,
                     "the reload")
            assert {get(port, "/").body for _ in range(10)} == {b"two"}
            handler.write_text("def fun(req, state):\n    return (\n")  # a syntax error
            wait_for(lambda: "rolling restart stopped" in run.log(), 20, "the failed reload")
            assert {get(port, "/").body for _ in range(10)} == {b"two"}  # still served
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_reload_of_a_lone_module_names_the_file(tmp_path: Path) -> None:
    handler = tmp_path / "lone.py"
    handler.write_text("def fun(req, state):\n    return {'body': 'one'}, state\n")
    with cluster_run("--reload", "--workers", "1", "--app-dir", str(tmp_path),
                     handler="lone:fun") as run:
        port = ports_of(run.banner)[0]
        assert get(port, "/").body == b"one"
        handler.write_text("def fun(req, state):\n    return {'body': 'two'}, state\n")
        wait_for(lambda: get(port, "/").body == b"two", 20, "the reload")
        assert "--reload: lone.py changed; rolling the workers" in run.log()


# -- drain on SIGTERM ----------------------------------------------------------------

@pytest.mark.slow
def test_a_gateway_drains_on_sigterm() -> None:
    with cluster() as c:
        gw = c.gateway("--shutdown-grace", "2")
        c.worker(WS_APP)
        port = int(gw.ready["port"])
        ws = ws_connect(f"ws://127.0.0.1:{port}/echo", legacy=True)
        results: dict[str, int] = {}

        def call(name: str, path: str) -> None:
            results[name] = get(port, path, timeout=20).status

        threads = [threading.Thread(target=call, args=("quick", "/sleep/1")),
                   threading.Thread(target=call, args=("slow", "/sleep/6"))]
        for thread in threads:
            thread.start()
        wait_for(lambda: b"cluster_gateway_dispatch_inflight 2.0" in
                 get(int(gw.ready["metrics"].rpartition(":")[2]), "/metrics").body, 5,
                 "both requests at a worker")
        gw.popen.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        wait_for(lambda: not _accepts(port), 5, "the port to close")
        for thread in threads:
            thread.join(20)
        # In flight and done within the grace: answered. Past it: 503.
        assert results == {"quick": 200, "slow": 503}
        assert gw.popen.wait(15) == 0


def test_a_worker_finishes_what_it_holds_on_sigterm() -> None:
    with cluster() as c:
        gw = c.gateway()
        first = c.worker(APP)
        port = int(gw.ready["port"])
        held = Conn(port, timeout=20)
        held.send(b"GET /sleep/1.5 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: "draining" not in gw.log() and
                 b'inflight 1.0' in get(int(gw.ready["metrics"].rpartition(":")[2]),
                                        "/metrics").body, 5, "the request at the worker")
        second = c.worker(APP)
        first.popen.send_signal(signal.SIGTERM)
        gw.wait_log("is draining")
        # New requests go to the worker that stays, while the first finishes its own.
        assert {pid_served(port) for _ in range(10)} == {second.pid}
        assert held.read_response().status == 200
        assert first.popen.wait(15) == 0
        held.close()
        assert "left after draining" in gw.wait_log("left after draining")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# -- hung children ---------------------------------------------------------------------

@pytest.mark.slow
def test_the_supervisor_restarts_a_hung_worker_gateway_and_coordinator() -> None:
    with cluster_run("--child-timeout", "2", "--workers", "1") as run:
        port = ports_of(run.banner)[0]
        for name in ("worker-1", "gateway-1", "coordinator"):
            hung = run.pids(name)[-1]
            os.kill(hung, signal.SIGSTOP)
            wait_for(lambda name=name: len(run.pids(name)) == 2, 15,  # type: ignore[misc]
                     f"{name} to be replaced")
            assert f"pid {hung}) gave no sign of life" in run.log()
            wait_for(lambda hung=hung: not alive(hung), 5,  # type: ignore[misc]
                     "the hung process to be gone")
            wait_for(lambda: _status(port) == 200, 15, f"service after {name} was replaced")


# -- the connection limit --------------------------------------------------------------

def test_one_connection_over_the_limit_gets_503_and_is_closed() -> None:
    with cluster() as c:
        gw = c.gateway("--max-connections", "3")
        c.worker(APP)
        port = int(gw.ready["port"])
        held = [Conn(port) for _ in range(3)]
        for conn in held:
            conn.send(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
            assert conn.read_response().status == 200
        over = Conn(port)
        over.send(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
        refused = over.read_response()
        assert refused.status == 503 and refused.header("retry-after") == "1"
        assert over.wait_closed(5)
        gw.wait_log("at --max-connections (3)")
        metrics = get(int(gw.ready["metrics"].rpartition(":")[2]), "/metrics").body
        assert b"cluster_gateway_connections_refused_total 1.0" in metrics
        held.pop().close()
        wait_for(lambda: _status(port) == 200, 5, "a free slot to serve again")
        for conn in held:
            conn.close()


def test_processes_raise_their_file_descriptor_limit_and_probe_answers() -> None:
    import resource
    soft_before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with cluster() as c:
        # Started with a low soft limit (inherited from us), as from a default shell.
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        try:
            gw = c.gateway()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft_before, hard))
        limits = Path(f"/proc/{gw.pid}/limits").read_text()
        found = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits)
        assert found is not None, limits
        assert int(found[1]) == int(found[2]) == hard > 256, limits
        metrics = gw.ready["metrics"]
        probe_cmd = [sys.executable, "-m", "cluster", "probe"]
        live = subprocess.run([*probe_cmd, "live", metrics], capture_output=True, text=True,
                              timeout=20)
        assert live.returncode == 0 and json.loads(live.stdout)["live"], live
        ready = subprocess.run([*probe_cmd, "ready", metrics], capture_output=True, text=True,
                               timeout=20)
        assert ready.returncode == 1 and ready.stdout.startswith("503: "), ready  # no worker
        gone = subprocess.run([*probe_cmd, "ready", "127.0.0.1:1"], capture_output=True,
                              text=True, timeout=20)
        assert gone.returncode == 1 and "cluster probe:" in gone.stderr


@pytest.mark.slow
def test_children_stop_when_the_supervisor_is_killed_or_stopped_while_starting() -> None:
    """kill -9 of `cluster run` leaves no child serving on unsupervised; SIGTERM while
    it still waits for a child to be ready stops everything too."""
    log_fd, log_name = log_file("cluster-run-")
    popen = subprocess.Popen(
        [sys.executable, "-m", "cluster", "run", "--handler", APP, "--port", "0",
         "--heartbeat-interval", "0.25"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_fd)
    os.close(log_fd)
    log = Path(log_name)
    children = wait_for(lambda: [int(p) for p in re.findall(r"started \S+ pid (\d+)",
                                                            log.read_text())][:4] if
                        len(re.findall(r"started \S+ pid", log.read_text())) >= 4 else None,
                        30, "the four children")
    wait_for(lambda: "running" in log.read_text(), 30, "a worker running")
    popen.kill()
    popen.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in children), 30,
             "every child gone with its supervisor")

    # A gateway that cannot become ready (no worker will link: an etcd nobody runs).
    log_fd, log_name = log_file("cluster-run-")
    popen = subprocess.Popen(
        [sys.executable, "-m", "cluster", "run", "--handler", APP, "--port", "0",
         "--state-backend", f"etcd://127.0.0.1:{free_port()}", "--start-timeout", "30"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_fd)
    os.close(log_fd)
    log = Path(log_name)
    wait_for(lambda: "started gateway-1" in log.read_text(), 30, "the gateway started")
    popen.send_signal(signal.SIGTERM)
    assert popen.wait(30) == 1  # it gave up starting, and said why
    assert "stopped while waiting" in log.read_text()
    started = [int(p) for p in re.findall(r"started \S+ pid (\d+)", log.read_text())]
    wait_for(lambda: not any(alive(pid) for pid in started), 30, "its children gone")
