"""The compiled build and the pure-Python one, each serving for real.

`make test` runs this on the compiled build and again under `make test-pure`
(CLUSTER_PURE_PYTHON=1 in the environment); each test sets the variable it needs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster import compiled
from tests.harness import ROOT, cluster
from tests.httpclient import get
from tests.integration.test_cli import cluster_cmd, cluster_run, ports_of

BUILT = compiled.group_library(ROOT / "cluster") is not None
PURE = {compiled.PURE_PYTHON_ENV: "1"}
COMPILED = {compiled.PURE_PYTHON_ENV: ""}


def test_pure_python_serves_and_says_so() -> None:
    version = cluster_cmd("--version", env=PURE)
    assert version.returncode == 0
    expected = "pure Python (CLUSTER_PURE_PYTHON=1)" if BUILT else "pure Python (not compiled)"
    assert version.stdout.strip().endswith(f", {expected})"), version.stdout
    with cluster_run("--workers", "1", env=PURE) as run:
        assert f"; {expected})" in run.banner
        (port,) = ports_of(run.banner)
        assert get(port, "/").status == 200


@pytest.mark.skipif(not BUILT, reason="not compiled here (no C compiler at install time)")
def test_every_role_runs_the_compiled_modules() -> None:
    assert cluster_cmd("--version", env=COMPILED).stdout.strip().endswith(
        ", compiled with mypyc)")
    with cluster() as c:
        gw = c.gateway(env=COMPILED)
        wk = c.worker("examples.hello:fun", env=COMPILED)
        assert gw.ready["build"] == wk.ready["build"] == "compiled with mypyc"
        resp = get(int(gw.ready["port"]), "/")
        assert resp.status == 200 and resp.body == b"hello\n"
        # The modules loaded are the extension modules, not their source.
        for proc in (gw, wk):
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            assert f"{compiled.GROUP}__mypyc" in maps


def test_a_compiled_process_and_a_pure_one_serve_the_same_cluster() -> None:
    """Mixed roles (a rolling upgrade from a pure install, say) speak the same wire."""
    with cluster() as c:
        gw = c.gateway(env=PURE)
        wk = c.worker("examples.hello:fun", env=COMPILED)
        assert gw.ready["build"].startswith("pure Python")
        assert wk.ready["build"] == ("compiled with mypyc" if BUILT else gw.ready["build"])
        resp = get(int(gw.ready["port"]), "/")
        assert resp.status == 200 and resp.body == b"hello\n"
