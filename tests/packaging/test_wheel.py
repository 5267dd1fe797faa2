"""The wheel as a user gets it: built here with the hot modules compiled, installed
into a fresh venv away from the checkout, serving.

Run by `make test-wheel` (it sets CLUSTER_WHEEL_TEST=1): a build with mypyc and a
venv's dependencies take a few minutes, so not part of `make test`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cluster import compiled
from tests.harness import ROOT, wait_for
from tests.httpclient import get

pytestmark = [
    pytest.mark.skipif(os.environ.get("CLUSTER_WHEEL_TEST") != "1",
                       reason="the wheel, built and installed: make test-wheel"),
    pytest.mark.timeout(900),
]

HELLO = "def fun(req, state):\n    return {'status': 200, 'body': 'from the wheel'}\n"


def run(argv: list[str], cwd: Path, timeout: float = 600,
        env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"$ {' '.join(argv)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_wheel_installs_compiled_and_serves(tmp_path: Path) -> None:
    # Built by a fresh venv's pip, as a user's `pip install .` is: in pip's isolated
    # build environment, with none of the package's dependencies installed beside it.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    pip = str(venv / "bin" / "pip")
    wheels = tmp_path / "wheels"
    run([pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(ROOT)],
        cwd=tmp_path, env={"CLUSTER_STRICT_BUILD": "1"})
    (wheel,) = wheels.glob("cluster_server-*.whl")
    assert re.search(r"-cp311-cp311-linux_\w+\.whl$", wheel.name), wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in compiled.HOT_MODULES:
        source = "/".join(module.split(".")) + ".py"
        assert source in names  # the pure-Python fallback ships too
        assert any(n.startswith(source[:-3] + ".cpython-") for n in names), module
    assert any(n.startswith(f"{compiled.GROUP}__mypyc.") for n in names)
    assert "cluster/js/cluster-client.js" in names  # the JavaScript client, as a file

    run([pip, "install", "--quiet", str(wheel)], cwd=tmp_path)
    cluster = str(venv / "bin" / "cluster")
    assert run([cluster, "--version"], cwd=tmp_path).strip().endswith(
        ", compiled with mypyc)")
    assert "CLUSTER_PURE_PYTHON=1" in run([cluster, "--version"], cwd=tmp_path,
                                          env={compiled.PURE_PYTHON_ENV: "1"})

    app = tmp_path / "app"
    app.mkdir()
    (app / "hello.py").write_text(HELLO)
    log = (tmp_path / "run.log").open("w")
    popen = subprocess.Popen([cluster, "run", "--handler", "hello:fun", "--port", "0",
                              "--workers", "1"], cwd=app, stdout=subprocess.PIPE,
                             stderr=log, text=True)
    try:
        assert popen.stdout is not None
        banner = wait_for(popen.stdout.readline, 60, "the banner")
        assert "compiled with mypyc" in banner, banner
        port = int(re.findall(r"http://127\.0\.0\.1:(\d+)(?![\d/])", banner)[0])
        resp = get(port, "/")
        assert resp.status == 200 and resp.body == b"from the wheel"
        script = get(port, "/_cluster/client.js")  # served from the installed package
        assert script.status == 200
        assert script.body == (ROOT / "clients" / "js" / "cluster-client.js").read_bytes()
    finally:
        popen.send_signal(signal.SIGTERM)
        code = popen.wait(30)
        if popen.stdout is not None:
            popen.stdout.close()
        log.close()
    assert code == 0, (tmp_path / "run.log").read_text()
