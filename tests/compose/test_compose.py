"""`docker compose up` for real: docker-compose (v1, Debian's) against podman's
Docker-compatible API, with images built here (tests/compose/images.py). Grafana is
left out (not installable here; its queries are checked against a real Prometheus
in tests/integration/test_deploy.py).

Run by `make compose-test` (it sets CLUSTER_COMPOSE_TEST=1); minutes, not seconds,
so not part of `make test`. The containers get addresses on the network compose
makes for the project; the test talks to them through the ports the compose file
publishes on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.compose.images import (
    BASE_TAGS,
    PROMETHEUS_TAG,
    build_base,
    build_prometheus,
    size_mib,
)
from tests.harness import ROOT, wait_for
from tests.integration.test_deploy import http

pytestmark = [
    pytest.mark.skipif(os.environ.get("CLUSTER_COMPOSE_TEST") != "1",
                       reason="the real compose run: make compose-test"),
    pytest.mark.timeout(1800),
]

SERVICES = ["keys", "coordinator", "gateway-1", "gateway-2", "worker", "prometheus"]


def answers(url: str) -> bool:
    try:
        return http(url, timeout=2)[0] == 200
    except OSError:
        return False


@contextmanager
def podman_api() -> Iterator[str]:
    """podman's Docker-compatible API on a socket of our own; the DOCKER_HOST for it."""
    directory = Path(tempfile.mkdtemp(prefix="cluster-podman-"))
    socket_path = directory / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0",
                                f"unix://{socket_path}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(socket_path.exists, 20, "podman's API socket")
        yield f"unix://{socket_path}"
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(20)
        shutil.rmtree(directory, ignore_errors=True)


class Compose:
    def __init__(self, docker_host: str) -> None:
        self.project = f"clustertest{os.getpid()}"
        self.env = {**os.environ, "DOCKER_HOST": docker_host,
                    "COMPOSE_PROJECT_NAME": self.project,
                    # Grafana does not run here, but the file needs its password.
                    "GRAFANA_ADMIN_PASSWORD": "compose-test"}

    def __call__(self, *args: str, timeout: float = 900) -> str:
        done = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"),
                               *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)}: {done.returncode}\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def containers(self, service: str) -> list[str]:
        out = subprocess.run(["podman", "ps", "-q", "--filter",
                              f"label=com.docker.compose.project={self.project}",
                              "--filter", f"label=com.docker.compose.service={service}"],
                             capture_output=True, text=True, check=True).stdout
        return out.split()

    def logs(self) -> str:
        try:
            return self("logs", "--no-color", "--tail", "40", timeout=60)[-6000:]
        except AssertionError as exc:
            return str(exc)


def inspect(container: str) -> dict[str, Any]:
    out = subprocess.run(["podman", "inspect", container], capture_output=True, text=True,
                         check=True).stdout
    return dict(json.loads(out)[0])


def counter_workers(port: int, count: int) -> set[str]:
    """POST /counter `count` times; the values must go up by one; the workers seen."""
    workers = set()
    last = None
    for _ in range(count):
        status, body = http(f"http://127.0.0.1:{port}/counter", "POST")
        assert status == 200, body
        answer = json.loads(body)
        if last is not None:
            assert answer["counter"] > last
        last = answer["counter"]
        workers.add(answer["worker"])
    return workers


def test_docker_compose_up_for_real(record_property: Any) -> None:
    built = {"base": build_base(), "prometheus": build_prometheus()}
    sizes = {"base": size_mib(BASE_TAGS[0]), "prometheus": size_mib(PROMETHEUS_TAG)}
    with podman_api() as docker_host:
        compose = Compose(docker_host)
        began = time.monotonic()
        compose("build", "coordinator")
        built["cluster image"] = time.monotonic() - began
        sizes["cluster image"] = size_mib("cluster:latest")
        # The image's first stage compiled the hot path; the one that runs has it.
        version = subprocess.run(
            ["podman", "run", "--rm", "--ulimit", "nofile=1024:1024", "--ulimit",
             "nproc=1024:1024", "cluster:latest", "--version"],
            capture_output=True, text=True, timeout=60, check=True).stdout
        assert version.strip().endswith(", compiled with mypyc)"), version
        try:
            began = time.monotonic()
            compose("up", "-d", "--scale", "worker=3", *SERVICES)
            wait_for(lambda: answers("http://127.0.0.1:8000/hello") and
                     answers("http://127.0.0.1:8001/hello"), 180, "both gateways")
            to_serving = time.monotonic() - began
            # Healthchecks: each container's own command, as the engine runs it.
            for service in ("coordinator", "gateway-1", "gateway-2", "worker"):
                for container in compose.containers(service):
                    wait_for(lambda c=container: subprocess.run(  # type: ignore[misc]
                        ["podman", "healthcheck", "run", c], capture_output=True
                    ).returncode == 0, 60, f"{service} healthy")
            to_healthy = time.monotonic() - began

            # The counter is one across workers and gateways. A worker is healthy once
            # it runs, which may be before it has linked to both gateways (a worker
            # that started before the coordinator answered is restarted): wait for it.
            wait_for(lambda: len(counter_workers(8000, 30) | counter_workers(8001, 30)) == 3,
                     60, "all three workers serving")

            # The chat crosses gateways (a WebSocket on each).
            from websockets.sync.client import connect
            with connect("ws://127.0.0.1:8000/chat/test?name=a") as a, \
                    connect("ws://127.0.0.1:8001/chat/test?name=b") as b:
                # Each join is in place once its 101 has come (the gateway holds it
                # until every worker knows the room is held there).
                a.send("across")
                deadline = time.monotonic() + 10
                while True:
                    message = json.loads(b.recv(max(0.1, deadline - time.monotonic())))
                    if "offset" in message:  # chat messages are published, numbered
                        assert message["data"] == {"type": "message", "name": "a",
                                                   "text": "across"}
                        break

            # Prometheus scrapes every process, found through discovery.
            def all_up() -> bool:
                try:
                    active = json.loads(http("http://127.0.0.1:9090/api/v1/targets")[1])[
                        "data"]["activeTargets"]
                except (OSError, ValueError, KeyError):
                    return False
                return len(active) == 6 and all(t["health"] == "up" for t in active)
            wait_for(all_up, 120, "Prometheus scraping the 6 processes")

            # A killed worker is replaced by its restart policy.
            victim = compose.containers("worker")[0]
            pid = inspect(victim)["State"]["Pid"]
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: inspect(victim)["State"]["Running"] and
                     inspect(victim)["State"]["Pid"] != pid, 60, "the worker restarted")
            wait_for(lambda: len(counter_workers(8000, 30)) == 3, 60,
                     "three workers serving again")

            # One more worker gets traffic.
            compose("up", "-d", "--scale", "worker=4", "--no-recreate", *SERVICES)
            wait_for(lambda: len(counter_workers(8000, 40) | counter_workers(8001, 40)) == 4,
                     90, "the fourth worker serving")

            # Each container holds its own secret key and the public ones, nothing more.
            for service, role in (("coordinator", "coordinator"), ("gateway-1", "gateway"),
                                  ("gateway-2", "gateway"), ("worker", "worker")):
                for container in compose.containers(service):
                    keys = subprocess.run(["podman", "exec", container, "ls", "/keys"],
                                          capture_output=True, text=True, check=True).stdout
                    secrets = [k for k in keys.split() if k.endswith(".key_secret")]
                    assert secrets == [f"{role}.key_secret"], (service, keys)
            # Prometheus only on the loopback.
            (prom,) = compose.containers("prometheus")
            published = subprocess.run(["podman", "port", prom], capture_output=True,
                                       text=True, check=True).stdout
            assert "127.0.0.1:9090" in published and "0.0.0.0" not in published, published

            # The coordinator wrote its log in its volume, as the image's user.
            coordinator = compose.containers("coordinator")[0]
            listing = subprocess.run(["podman", "exec", coordinator, "ls", "-ln", "/data"],
                                     capture_output=True, text=True, check=True).stdout
            assert "state.log" in listing, listing
        except AssertionError as exc:
            # The logs first and the reason last: CI shows the tail of a long output.
            print(f"--- compose logs\n{compose.logs()}\n--- failed: {exc}", flush=True)
            raise AssertionError(str(exc)[-2000:]) from None
        finally:
            compose("down", "-v", "--remove-orphans", timeout=300)
    record_property("seconds", {**built, "up to serving": to_serving,
                                "up to healthy": to_healthy})
    record_property("image MiB", sizes)
    print(f"\nbuild seconds {built}; up to serving {to_serving:.0f} s, to healthy "
          f"{to_healthy:.0f} s; image sizes MiB {sizes}")
