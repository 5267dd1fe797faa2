"""The commands as a user runs them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import ROOT, log_file, wait_for
from tests.httpclient import get

APP = "tests.apps.handlers:app"


def cluster_cmd(*args: str, env: dict[str, str] | None = None,
                timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


class Running:
    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.popen = popen
        self.log_path = log
        self.banner = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self, name: str) -> list[int]:
        return [int(p) for p in re.findall(rf"started {name} pid (\d+)", self.log())]


@contextmanager
def cluster_run(*args: str, env: dict[str, str] | None = None,
                handler: str = APP) -> Iterator[Running]:
    log_fd, log_name = log_file("cluster-run-")
    popen = subprocess.Popen(
        [sys.executable, "-m", "cluster", "run", "--handler", handler, "--port", "0",
         "--heartbeat-interval", "0.25", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log_fd, env={**os.environ, **(env or {})})
    os.close(log_fd)
    running = Running(popen, Path(log_name))
    try:
        assert popen.stdout is not None
        os.set_blocking(popen.stdout.fileno(), False)

        def banner_line() -> bool:
            assert popen.poll() is None, f"exited; log:\n{running.log()}"
            running.banner += (popen.stdout.read() or b"").decode()  # type: ignore[union-attr]
            return "\n" in running.banner

        wait_for(banner_line, 30, "the banner")
        yield running
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        if popen.stdout is not None:
            popen.stdout.close()


def ports_of(banner: str) -> list[int]:
    # The gateways' URLs, not the discovery URL (http://127.0.0.1:N/targets).
    return [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)(?![\d/])", banner)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive: it only waits for its parent to reap it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_cluster_run_supervises_and_stops_everything() -> None:
    with cluster_run("--gateways", "2", "--workers", "2") as run:
        ports = ports_of(run.banner)
        assert len(ports) == 2 and "2 gateways, 2 workers" in run.banner
        for port in ports:
            assert get(port, "/").status == 200
        served = {int(get(ports[0], "/pid").header("x-pid") or 0) for _ in range(8)}
        assert served == set(run.pids("worker-1") + run.pids("worker-2"))

        # A crashed worker is restarted; a crashed gateway comes back on its port.
        os.kill(run.pids("worker-1")[0], signal.SIGKILL)
        wait_for(lambda: len(run.pids("worker-1")) == 2, 10, "worker-1 restarted")
        os.kill(run.pids("gateway-1")[0], signal.SIGKILL)
        wait_for(lambda: len(run.pids("gateway-1")) == 2, 10, "gateway-1 restarted")
        wait_for(lambda: _status(ports[0]) == 200, 10, "gateway-1 serving again")
        new_worker = run.pids("worker-1")[1]
        wait_for(lambda: any(int(get(ports[0], "/pid").header("x-pid") or 0) == new_worker
                             for _ in range(4)), 10, "the restarted worker serving")

        children = [p for name in ("coordinator", "gateway-1", "gateway-2", "worker-1",
                                   "worker-2") for p in run.pids(name)[-1:]]
        run.popen.send_signal(signal.SIGTERM)
        assert run.popen.wait(30) == 0
        for pid in children:
            wait_for(lambda p=pid: not alive(p), 5, f"child {pid} to exit")


def _status(port: int) -> int:
    try:
        return get(port, "/", timeout=2).status
    except OSError:
        return 0


def test_sigint_stops_cleanly() -> None:
    with cluster_run("--workers", "1") as run:
        run.popen.send_signal(signal.SIGINT)
        assert run.popen.wait(30) == 0
        assert "stopping" in run.log()


def test_flags_have_environment_twins() -> None:
    with cluster_run(env={"CLUSTER_WORKERS": "3", "CLUSTER_MAX_BODY": "10"}) as run:
        assert "3 workers" in run.banner
        port = ports_of(run.banner)[0]
        assert get(port, "/post-only", method="POST", body=b"x" * 11).status == 413


def test_broken_handler_is_one_line_and_nonzero() -> None:
    for spec, message in [("nosuchmodule:app", "cannot import"),
                          ("tests.apps.handlers:nothere", "has no attribute"),
                          ("tests.apps.handlers:not_a_handler", "not an App or a function"),
                          ("tests.apps.handlers:three_args", "ASGI"),
                          ("nocolon", "pkg.module:object")]:
        for command in (["run"], ["worker"]):
            result = cluster_cmd(*command, "--handler", spec)
            assert result.returncode == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and message in lines[0], result.stderr


def test_bad_flag_value_is_one_line() -> None:
    result = cluster_cmd("gateway", "--port", "notaport")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "not a valid int" in result.stderr


def test_port_in_use_is_one_line() -> None:
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cluster_cmd("gateway", "--port", str(port), "--coordinator",
                             "tcp://127.0.0.1:1")
    assert result.returncode == 1 and "cannot start" in result.stderr
    assert "Traceback" not in result.stderr


def test_routes_prints_the_route_map() -> None:
    result = cluster_cmd("routes", "examples.routes:app")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["METHODS", "PATH", "VIEW"]
    assert any("/items/<int:item_id>" in line and "DELETE,GET,HEAD,PUT" in line
               for line in lines)
    assert lines[-1].split()[:3] == ["*", "(not", "found)"]


def test_routes_refuses_a_function() -> None:
    result = cluster_cmd("routes", "examples.hello:fun")
    assert result.returncode == 2 and "not an App" in result.stderr


def test_usage() -> None:
    result = cluster_cmd()
    assert result.returncode == 2 and "usage: cluster COMMAND" in result.stderr


@pytest.mark.parametrize(("command", "hint"), [("frobnicate", ""),
                                               ("rnu", " (did you mean run?)")])
def test_an_unknown_command_says_so_in_one_line(command: str, hint: str) -> None:
    result = cluster_cmd(command)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"cluster: unknown command {command!r}{hint}; commands: run, routes, coordinator, "
        "gateway, worker, keygen, probe, repair; `cluster --help` says what each does"]


def test_version() -> None:
    from importlib import metadata
    result = cluster_cmd("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"cluster {metadata.version('cluster-server')} "
                                    "(cluster-server, Python 3.")


def test_a_mistyped_flag_is_one_line() -> None:
    result = cluster_cmd("run", "--handler", "examples.hello:fun", "--wrokers", "2")
    assert result.returncode == 2
    assert result.stderr.strip() == ("cluster run: unknown flag --wrokers (did you mean "
                                     "--workers?); `cluster run --help` lists the flags")


def test_help_puts_the_common_flags_first_and_groups_the_rest() -> None:
    out = cluster_cmd("run", "--help").stdout
    assert out.startswith("usage: cluster run --handler PKG.MODULE:OBJ [flags]")
    sections = [line for line in out.splitlines() if line.endswith(":") and
                not line.startswith(" ")]
    assert sections[0] == "common options:" and "WebSocket:" in sections
    assert out.index("--handler") < out.index("--port") < out.index("HTTP limits")
    assert "--reload/--no-reload" in out and "[RELOAD]" not in out
    assert len(out.split("common options:")[1].split("\n\n")[0].splitlines()) < 45


def test_an_import_error_in_the_handler_is_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def fun(req, state):\n    return 'x'\n\nif (:\n")
    (tmp_path / "raises.py").write_text("import os\n\nVALUE = int('x')\n")
    for module, expected in (
            ("broken", f"{tmp_path / 'broken.py'}:4: SyntaxError: "),
            ("raises", f"{tmp_path / 'raises.py'}:3: ValueError: invalid literal")):
        for command in ("run", "worker"):
            result = cluster_cmd(command, "--handler", f"{module}:fun", "--app-dir",
                                 str(tmp_path))
            assert result.returncode == 2, result.stderr
            (line,) = result.stderr.strip().splitlines()
            assert f"importing {module!r}: {expected}" in line, line


def test_app_dir_finds_a_handler_elsewhere(tmp_path: Path) -> None:
    (tmp_path / "hits.py").write_text(
        "def fun(req, state):\n    return {'status': 200, 'body': 'from hits'}\n")
    missing = cluster_cmd("run", "--handler", "hits:fun")
    assert missing.returncode == 2
    assert "no hits.py or package 'hits' in" in missing.stderr and "--app-dir" in missing.stderr
    with cluster_run("--workers", "1", "--app-dir", str(tmp_path), handler="hits:fun") as run:
        assert get(ports_of(run.banner)[0], "/").body == b"from hits"


def test_a_body_over_the_limit_is_told_the_limit_and_the_flag() -> None:
    with cluster_run("--workers", "1", "--max-body", "100") as run:
        port = ports_of(run.banner)[0]
        resp = get(port, "/post-only", method="POST", body=b"x" * 101)
        assert resp.status == 413
        assert resp.body == b"Content Too Large: a request body here is at most 100 bytes " \
                            b"(--max-body)\n"
        assert "coordinator on tcp://127.0.0.1:" in run.banner
        assert "1 gateway, 1 worker;" in run.banner


def test_help_lists_env_twins() -> None:
    result = cluster_cmd("gateway", "--help")
    assert result.returncode == 0 and "CLUSTER_REQUEST_TIMEOUT" in result.stdout
    assert "--ready-fd" not in result.stdout


def test_hello_example_names_its_worker() -> None:
    popen = subprocess.Popen([sys.executable, "-m", "cluster", "run", "--handler",
                              "examples.hello:fun", "--port", "0"], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert popen.stdout is not None
        banner = popen.stdout.readline()
        port = ports_of(banner)[0]
        resp = get(port, "/")
        assert resp.body == b"hello\n" and (resp.header("x-worker") or "").startswith("wk-")
    finally:
        popen.send_signal(signal.SIGTERM)
        popen.wait(30)
        if popen.stdout is not None:
            popen.stdout.close()


def _cpus_of_every_thread(pid: int) -> set[str]:
    """The Cpus_allowed_list of each of a process's threads."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found.add(line.split(":", 1)[1].strip())
    return found


def test_cluster_run_pins_each_worker_to_one_cpu() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    with cluster_run("--workers", "2") as run:
        port = ports_of(run.banner)[0]
        assert get(port, "/").status == 200
        for i, name in enumerate(("worker-1", "worker-2")):
            pid = run.pids(name)[0]
            # Round robin after the one gateway's share; every thread (loop, handler
            # pool, ZeroMQ) on that CPU.
            assert _cpus_of_every_thread(pid) == {str(cpus[(1 + i) % len(cpus)])}
        gateway = run.pids("gateway-1")[0]
        assert _cpus_of_every_thread(gateway) == _cpus_of_every_thread(os.getpid())  # free


def test_unpinned_run_and_a_cpu_out_of_reach() -> None:
    with cluster_run("--workers", "1", "--pin-workers", "false") as run:
        pid = run.pids("worker-1")[0]
        assert _cpus_of_every_thread(pid) == _cpus_of_every_thread(os.getpid())
    result = cluster_cmd("worker", "--handler", APP, "--cpu", "4096")
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert "--cpu 4096" in result.stderr
    result = cluster_cmd("run", "--handler", APP, "--cpu", "0")
    assert result.returncode != 0 and "--pin-workers" in result.stderr


def test_a_run_killed_with_9_leaves_its_keys_only_until_the_next_start(
        tmp_path: Path) -> None:
    env = {"TMPDIR": str(tmp_path), "CLUSTER_KEYS": ""}  # keys of its own
    with cluster_run("--workers", "1", env=env) as first:
        keys = Path(re.findall(r"CURVE keys in (\S+) ", first.banner)[0])
        assert keys.parent == tmp_path / f"cluster-run-keys-{os.getuid()}"
        assert keys.parent.stat().st_mode & 0o777 == 0o700
        children = [p for name in ("coordinator", "gateway-1", "worker-1")
                    for p in first.pids(name)]
        first.popen.kill()
        first.popen.wait(10)
        for pid in children:  # orphans now: stopped by their pids
            os.kill(pid, signal.SIGKILL)
        assert keys.is_dir()  # nobody was left to remove them
    with cluster_run("--workers", "1", env=env) as second:
        mine = Path(re.findall(r"CURVE keys in (\S+) ", second.banner)[0])
        assert not keys.exists() and mine.is_dir()
        assert "removed 1 key directories left by runs that were killed" in second.log()
    assert not mine.exists() and list(mine.parent.iterdir()) == []


def test_a_secret_key_others_can_read_is_refused(tmp_path: Path) -> None:
    assert cluster_cmd("keygen", str(tmp_path)).returncode == 0
    secret = tmp_path / "gateway.key_secret"
    os.chmod(secret, 0o644)
    done = cluster_cmd("gateway", "--keys", str(tmp_path), "--port", "0")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"cluster-gateway: --keys {tmp_path}: {secret} is mode 0644, readable by others; "
        f"`chmod 600 {secret}` (a secret key must be readable by its owner alone)")
