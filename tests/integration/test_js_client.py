"""The JavaScript client (clients/js) under node's own test runner, against a real
`cluster run` with two gateways; and the file every gateway serves at
/_cluster/client.js. The browser side is in test_browser.py."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.harness import ROOT, wait_for
from tests.httpclient import get
from tests.integration.test_cli import cluster_run, ports_of

JS = ROOT / "clients" / "js"
NODE = shutil.which("node")

pytestmark = pytest.mark.timeout(180)


def test_every_gateway_serves_the_client() -> None:
    with cluster_run("--gateways", "1", "--workers", "1",
                     handler="tests.apps.clients_app:app") as run:
        (port,) = ports_of(run.banner)
        answer = get(port, "/_cluster/client.js")
        assert answer.status == 200
        assert answer.header("content-type") == "text/javascript; charset=utf-8"
        assert answer.body == (JS / "cluster-client.js").read_bytes()
        etag = answer.header("etag")
        again = get(port, "/_cluster/client.js?v=1", headers={"if-none-match": etag or ""})
        assert again.status == 304 and again.body == b""
        assert get(port, "/_cluster/other.js").status == 404  # the app's, which has none


@pytest.mark.skipif(NODE is None, reason="node is not installed (make test installs it)")
@pytest.mark.slow
def test_the_node_suite_against_a_real_cluster() -> None:
    assert (JS / "node_modules" / "ws").is_dir(), "make test installs ws (npm ci)"
    with cluster_run("--gateways", "2", "--workers", "2",
                     handler="tests.apps.clients_app:app") as run:
        ports = ports_of(run.banner)
        victim = run.pids("gateway-1")[-1]
        env = {**os.environ, "CLUSTER_PORTS": ",".join(map(str, ports)),
               "CLUSTER_VICTIM_PID": str(victim)}
        done = subprocess.run([str(NODE), "--test", "--test-reporter=tap", "test/"],
                              cwd=JS, env=env, capture_output=True, text=True, timeout=150)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
        assert "# fail 0" in done.stdout and "# skipped 0" in done.stdout, done.stdout
        # The supervisor brought the killed gateway back: the client's reconnect found it.
        wait_for(lambda: len(run.pids("gateway-1")) == 2, 20, "gateway-1 restarted")
