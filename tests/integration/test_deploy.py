"""docker-compose.yml and deploy/, proven without a Docker engine.

The compose file is validated by Debian's docker-compose. Then its services run
as plain local processes with their own commands and environment: each service
gets its own loopback address (127.0.0.N, as a container gets its own network
namespace), its host name in every endpoint is mapped to that address, and binds
on 0.0.0.0 become binds on it, so the same fixed ports (5555, 8000, 9100) are
used by every service as in the containers. A real Prometheus (Debian's) is then
given deploy/prometheus/prometheus.yml, pointed at the coordinator the same way,
finds every process through the discovery endpoint, and every PromQL expression
of the Grafana dashboard must return data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from websockets.sync.client import connect

from tests.harness import ROOT, wait_for

BIN = ROOT / ".venv" / "bin"
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "cluster.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
WORKER_REPLICAS = 2  # as `docker compose up --scale worker=2`
SECRET = "handler-data-never-in-metrics"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: `make test` installs it with apt-get"
    return path


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, method: str = "GET", body: bytes | None = None,
         timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("docker-compose"), "-f", str(COMPOSE), "config"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, **env})


def test_compose_file_is_valid_for_docker_compose() -> None:
    result = compose_config(GRAFANA_ADMIN_PASSWORD="not-admin")
    assert result.returncode == 0, result.stderr
    spec = yaml.safe_load(COMPOSE.read_text())
    assert "name" not in spec  # Compose v1 refuses a top-level name
    assert {"coordinator", "gateway-1", "gateway-2", "worker", "prometheus",
            "grafana"} <= set(spec["services"])
    worker = spec["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker  # scalable


def test_compose_defaults_are_private() -> None:
    """Only the gateways on every interface; Grafana's password from the environment
    with anonymous access off; each service mounts its own secret key alone."""
    missing = compose_config(GRAFANA_ADMIN_PASSWORD="")
    assert missing.returncode != 0 and "set GRAFANA_ADMIN_PASSWORD" in missing.stderr
    config = yaml.safe_load(compose_config(GRAFANA_ADMIN_PASSWORD="s3cret").stdout)
    services = config["services"]
    for name, service in services.items():
        for port in service.get("ports") or []:
            text = port if isinstance(port, str) else \
                f"{port.get('host_ip', '')}:{port['published']}:{port['target']}"
            if name.startswith("gateway-"):
                assert not text.startswith("127.0.0.1:"), text
            else:
                assert text.startswith("127.0.0.1:"), (name, text)
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    mounts = {name: [str(v).split(":")[0] if isinstance(v, str) else v["source"]
                     for v in service.get("volumes") or []]
              for name, service in services.items()}
    for name, role in (("coordinator", "coordinator"), ("gateway-1", "gateway"),
                       ("gateway-2", "gateway"), ("worker", "worker")):
        keys = [m for m in mounts[name] if m.startswith("keys")]
        assert keys == [f"keys-{role}"], (name, keys)
    assert not any("keys" in m for m in mounts["prometheus"] + mounts["grafana"])


def test_keygen_exports_each_role_its_own_secret(tmp_path: Path) -> None:
    out = tmp_path / "by-role"
    for role in ("coordinator", "gateway", "worker"):
        (out / role).mkdir(parents=True)
    done = subprocess.run([str(BIN / "cluster"), "keygen", str(tmp_path / "all"),
                           "--export", str(out)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    publics = sorted(p.name for p in (tmp_path / "all").glob("*.key"))
    for role in ("coordinator", "gateway", "worker"):
        names = sorted(p.name for p in (out / role).iterdir())
        assert names == sorted([*publics, f"{role}.key_secret"]), names
        assert (out / role / f"{role}.key_secret").stat().st_mode & 0o777 == 0o600


# -- the compose services as local processes ---------------------------------------

class LocalCompose:
    """Runs the services built from this repository, as the compose file says."""

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        services = yaml.safe_load(COMPOSE.read_text())["services"]
        self.ours = {name: svc for name, svc in services.items() if "build" in svc}
        self.instances: list[tuple[str, str]] = []  # (instance name, service)
        for name in self.ours:
            if name == "worker":
                self.instances += [(f"worker-{i + 1}", name) for i in range(WORKER_REPLICAS)]
            else:
                self.instances.append((name, name))
        self.ips = {inst: f"127.0.0.{i + 2}" for i, (inst, _) in enumerate(self.instances)}
        self.data_dir = data_dir
        self.keys_dir = data_dir.parent / "keys"
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def ip(self, service: str) -> str:
        return self.ips[service]

    def _map(self, value: str, own_ip: str) -> str:
        """Host names in endpoints to addresses; wildcard binds to our own address."""
        for name, _service in self.instances:
            value = value.replace(f"//{name}:", f"//{self.ips[name]}:")
        return value.replace("0.0.0.0", own_ip).replace("/data", str(self.data_dir)) \
            .replace("/keys", str(self.keys_dir))

    def _order(self) -> list[tuple[str, str]]:
        started: set[str] = set()
        order: list[tuple[str, str]] = []
        while len(order) < len(self.instances):
            for inst, service in self.instances:
                deps = set(self.ours[service].get("depends_on") or []) & set(self.ours)
                if (inst, service) not in order and deps <= started:
                    order.append((inst, service))
            started = {service for _, service in order}
        return order

    def up(self) -> None:
        for inst, service in self._order():
            spec = self.ours[service]
            own_ip = self.ips[inst]
            env = {**os.environ}
            for key, value in (spec.get("environment") or {}).items():
                env[key] = self._map(str(value), own_ip)
            # A container's host name resolves to its address: here, its own address
            # (the service name where the file names one, the container's otherwise).
            advertised = env.get("CLUSTER_ADVERTISE_HOST", service)
            assert advertised == service, f"{inst} advertises {advertised!r}"
            env["CLUSTER_ADVERTISE_HOST"] = own_ip
            argv = [str(BIN / "cluster"), *(self._map(str(a), own_ip) for a in spec["command"])]
            log = open(self.log_dir / f"{inst}.log", "wb")  # noqa: SIM115 (closed by Popen's end)
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)
            log.close()
            if spec.get("restart") == "no":  # a one-shot service (keys): it runs first
                assert proc.wait(30) == 0, (self.log_dir / f"{inst}.log").read_text()
                continue
            self.procs.append((inst, proc))

    def healthchecks_pass(self) -> None:
        """Each service's healthcheck command, as its container would run it (the
        port named there is its own metrics port, here on its own address)."""
        for inst, _proc in self.procs:
            test = self.ours[self.instances_service(inst)]["healthcheck"]["test"]
            assert test[0] == "CMD" and test[1] == "cluster", test
            argv = [str(BIN / "cluster"), *test[2:-1], f"{self.ips[inst]}:{test[-1]}"]
            wait_for(lambda argv=argv: subprocess.run(argv, capture_output=True,  # type: ignore[misc]
                                                      timeout=10).returncode == 0,
                     20, f"{inst}'s healthcheck to pass")

    def instances_service(self, inst: str) -> str:
        return dict(self.instances)[inst]

    def logs(self) -> str:
        return "\n".join(f"--- {inst}\n{(self.log_dir / f'{inst}.log').read_text()[-3000:]}"
                         for inst, _ in self.procs)

    def down(self) -> None:
        for _inst, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _inst, proc in reversed(self.procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def local_compose(tmp: Path) -> Iterator[LocalCompose]:
    (tmp / "data").mkdir()
    (tmp / "logs").mkdir()
    for role in ("coordinator", "gateway", "worker"):  # the keys service's volumes
        (tmp / "keys-by-role" / role).mkdir(parents=True)
    compose = LocalCompose(tmp / "data", tmp / "logs")
    try:
        compose.up()
        yield compose
    finally:
        compose.down()


@contextmanager
def prometheus(tmp: Path, coordinator_ip: str) -> Iterator[str]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    # Faster than in production, so the test needs seconds, not minutes.
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    for job in config["scrape_configs"]:
        for sd in job.get("http_sd_configs", []):
            sd["url"] = sd["url"].replace("//coordinator:", f"//{coordinator_ip}:")
            sd["refresh_interval"] = "1s"
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([tool("prometheus"), f"--config.file={path}",
                             f"--storage.tsdb.path={tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=log)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ok(f"{url}/-/ready"), 30, "Prometheus ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ok(url: str) -> bool:
    try:
        return http(url, timeout=1)[0] == 200
    except OSError:
        return False


def _json(url: str) -> Any:
    status, body = http(url)
    assert status == 200, (url, status, body[:200])
    return json.loads(body)


class Traffic:
    """HTTP and WebSocket load on both gateways until stopped, from a thread."""

    def __init__(self, gateways: list[str]) -> None:
        self.gateways = gateways
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(20)

    def _run(self) -> None:
        a, b = self.gateways
        try:
            with connect(f"ws://{a}/chat/deploy?name=a") as ws_a, \
                    connect(f"ws://{b}/chat/deploy?name=b") as ws_b:
                while not self.stop.is_set():
                    for gw in self.gateways:
                        for method, path in [("GET", "/hello"), ("GET", "/routes/hello/x"),
                                             ("POST", "/counter"), ("GET", "/nothing")]:
                            http(f"http://{gw}{path}", method)
                        http(f"http://{gw}/map/secret", "PUT", SECRET.encode())
                    ws_a.send("from a")
                    ws_b.send("from b")
                    for ws in (ws_a, ws_b):  # each hears both, and presence news
                        ws.recv(timeout=5)
                        while True:
                            try:
                                ws.recv(timeout=0.01)
                            except TimeoutError:
                                break
                    self.stop.wait(0.05)  # pace: a steady trickle, not a load test
        except Exception as exc:  # reported by the test, not lost in the thread
            self.errors.append(repr(exc))


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_compose_services_run_locally_and_prometheus_graphs_every_panel(
        tmp_path: Path) -> None:
    with local_compose(tmp_path) as compose:
        coord = f"{compose.ip('coordinator')}:9100"
        expected = 1 + 2 + WORKER_REPLICAS
        try:
            targets = wait_for(
                lambda: _ok(f"http://{coord}/targets") and
                len(_json(f"http://{coord}/targets")) == expected and
                _json(f"http://{coord}/targets"), 30, "every process in discovery")
        except AssertionError:
            raise AssertionError(compose.logs()) from None
        roles = sorted(group["labels"]["role"] for group in targets)
        assert roles == ["coordinator", "gateway", "gateway", "worker", "worker"]
        compose.healthchecks_pass()

        gateways = [f"{compose.ip('gateway-1')}:8000", f"{compose.ip('gateway-2')}:8000"]
        with Traffic(gateways) as traffic, prometheus(tmp_path,
                                                      compose.ip("coordinator")) as prom:
            def all_up() -> bool:
                active = _json(f"{prom}/api/v1/targets")["data"]["activeTargets"]
                return len(active) == expected and all(t["health"] == "up" for t in active)
            wait_for(all_up, 30, "Prometheus scraping every process")

            missing: list[str] = []

            def every_panel_has_data() -> bool:
                missing.clear()
                for expr in dashboard_expressions():
                    query = urllib.parse.urlencode({"query": expr})
                    answer = _json(f"{prom}/api/v1/query?{query}")
                    if answer["status"] != "success" or not answer["data"]["result"]:
                        missing.append(expr)
                return not missing
            try:
                wait_for(every_panel_has_data, 60, "data for every dashboard expression")
            except AssertionError:
                raise AssertionError(f"no data for: {missing}") from None
            assert not traffic.errors, traffic.errors

        for group in targets:
            endpoint = group["targets"][0]
            status, body = http(f"http://{endpoint}/metrics")
            assert status == 200
            check = subprocess.run([tool("promtool"), "check", "metrics"], input=body,
                                   capture_output=True, timeout=30)
            assert check.returncode == 0, (endpoint, check.stdout, check.stderr)
            assert SECRET.encode() not in body
            assert http(f"http://{endpoint}/secret")[0] == 404
