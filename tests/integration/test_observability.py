"""Metrics endpoints, discovery, logs and start-up failures, on real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.harness import ROOT, cluster, wait_for
from tests.httpclient import get

APP = "tests.apps.handlers:app"


def metrics_port(proc_ready: dict[str, str]) -> int:
    return int(proc_ready["metrics"].rpartition(":")[2])


def scrape(port: int) -> str:
    resp = get(port, "/metrics")
    assert resp.status == 200
    assert (resp.header("content-type") or "").startswith("text/plain")
    return resp.body.decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the text exposition format."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        found = dict(pair.split("=", 1) for pair in label_text.rstrip("}").split(",") if pair)
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no sample {name} {labels}")


def test_every_role_serves_metrics_and_discovery_lists_them() -> None:
    with cluster() as c:
        gw = c.gateway()
        wk = c.worker(APP)
        port = int(gw.ready["port"])
        assert get(port, "/items/7").status == 200
        assert get(port, "/boom").status == 500
        assert get(port, "/nothing-here").status == 404

        text = scrape(metrics_port(gw.ready))
        assert sample(text, "cluster_gateway_requests_total", method="GET", status="200") == 1
        assert sample(text, "cluster_gateway_requests_total", method="GET", status="500") == 1
        assert sample(text, "cluster_gateway_request_duration_seconds_count") == 3
        assert sample(text, "cluster_gateway_workers") == 1
        assert sample(text, "cluster_gateway_worker_credit", worker=wk.ready["id"]) > 0
        assert sample(text, "cluster_gateway_connections", protocol="http") >= 0
        assert "process_resident_memory_bytes" in text

        text = scrape(metrics_port(wk.ready))
        assert sample(text, "cluster_worker_requests_total", route="/items/<int:item_id>",
                      status="200") == 1
        assert sample(text, "cluster_worker_requests_total", route="/boom", status="500") == 1
        assert sample(text, "cluster_worker_requests_total", route="(not found)",
                      status="404") == 1
        assert sample(text, "cluster_worker_exceptions_total", route="/boom",
                      type="RuntimeError") == 1
        assert sample(text, "cluster_worker_handler_duration_seconds_count",
                      route="/boom") == 1

        coord = metrics_port(c.coordinator.ready)
        text = scrape(coord)
        assert sample(text, "cluster_coordinator_members", member_role="worker") == 1
        assert sample(text, "cluster_coordinator_members", member_role="gateway") == 1
        groups = json.loads(get(coord, "/targets").body)
        by_role = {g["labels"]["role"]: g["targets"][0] for g in groups}
        assert by_role == {"coordinator": c.coordinator.ready["metrics"],
                           "gateway": gw.ready["metrics"], "worker": wk.ready["metrics"]}


def test_discovery_follows_members_that_come_and_go() -> None:
    with cluster() as c:
        c.gateway()
        coord = metrics_port(c.coordinator.ready)

        def workers() -> int:
            groups = json.loads(get(coord, "/targets").body)
            return sum(1 for g in groups if g["labels"]["role"] == "worker")
        extra = [c.worker(APP) for _ in range(2)]
        wait_for(lambda: workers() == 2, 10, "two workers listed")
        extra[0].terminate()
        wait_for(lambda: workers() == 1, 10, "the stopped worker gone from discovery")


def test_metrics_endpoint_answers_only_its_paths() -> None:
    with cluster() as c:
        gw = c.gateway()
        port = metrics_port(gw.ready)
        coord = metrics_port(c.coordinator.ready)
        assert get(port, "/").status == 404
        assert get(port, "/targets").status == 404  # discovery is the coordinator's
        assert get(port, "/metrics/../x").status == 404
        assert get(coord, "/state").status == 404
        resp = get(port, "/metrics", method="POST", body=b"x")
        assert resp.status == 405 and resp.header("allow") == "GET, HEAD"
        # Not HTTP at all, and a request far too large: refused, the endpoint lives on.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01 not http\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 400")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 431")
        assert get(port, "/metrics").status == 200


def test_metrics_port_minus_one_means_no_endpoint() -> None:
    with cluster() as c:
        gw = c.gateway("--metrics-port", "-1")
        assert gw.ready["metrics"] == ""
        assert get(int(gw.ready["port"]), "/items/1").status in (200, 503)


def test_json_logs_tie_gateway_and_worker_lines_by_request_id() -> None:
    with cluster() as c:
        gw = c.gateway("--log-format", "json", "--access-log", "true")
        wk = c.worker(APP, "--log-format", "json")
        assert get(int(gw.ready["port"]), "/boom").status == 500

        def line(proc: object, predicate: object) -> dict[str, object]:
            def find() -> dict[str, object] | None:
                for raw in proc.log().splitlines():  # type: ignore[attr-defined]
                    entry = json.loads(raw)  # every line is one JSON object
                    if predicate(entry):  # type: ignore[operator]
                        return entry  # type: ignore[no-any-return]
                return None
            return wait_for(find, 10, "a log line")  # type: ignore[no-any-return]

        access = line(gw, lambda e: "/boom" in e["message"])
        failure = line(wk, lambda e: e["level"] == "error")
        assert access["request_id"] == failure["request_id"]
        assert str(access["request_id"]).startswith(gw.ready["id"] + "/")
        assert access["role"] == "gateway" and failure["role"] == "worker"
        assert "RuntimeError" in str(failure["exception"])  # the traceback, in its line
        assert " 500 " in str(access["message"])


def test_log_level_hides_info_lines() -> None:
    with cluster() as c:
        gw = c.gateway("--log-level", "warning", "--access-log", "true")
        assert get(int(gw.ready["port"]), "/").status in (200, 503)
        # The first response's access line, if logged, is written before the gateway
        # answers a second request on its one loop: that answer is the barrier.
        assert get(int(gw.ready["port"]), "/").status in (200, 503)
        assert " INFO " not in gw.log()


@pytest.mark.parametrize("role", ["gateway", "worker"])
def test_unreachable_coordinator_at_start_is_one_line_and_nonzero(role: str) -> None:
    with socket.socket() as nobody:
        nobody.bind(("127.0.0.1", 0))  # a port where no coordinator answers
        endpoint = f"tcp://127.0.0.1:{nobody.getsockname()[1]}"
        args = ["--port", "0"] if role == "gateway" else ["--handler", APP]
        began = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "cluster", role, *args,
                                 "--coordinator", endpoint, "--start-timeout", "1",
                                 "--log-level", "error"],
                                cwd=ROOT, capture_output=True, text=True, timeout=30,
                                env={**os.environ})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no answer from the coordinator" in lines[0], result.stderr
    assert time.monotonic() - began < 15


def test_bad_log_format_is_refused() -> None:
    result = subprocess.run([sys.executable, "-m", "cluster", "gateway", "--log-format",
                             "xml"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "text or json" in result.stderr
