"""RFC 6455 conformance: the Autobahn TestSuite's cases, driven by kosoku, against an
echo handler on a real cluster. Sections 1-7 and 10 run here (seconds); the whole
suite, 9, 12 and 13 included, is `make conformance` (minutes): docs/websocket.md."""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.harness import cluster

SECTIONS = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]


def test_autobahn_sections_1_to_7_and_10(tmp_path: Path) -> None:
    kosoku = shutil.which("kosoku", path=str(Path(sys.executable).parent))
    assert kosoku, "kosoku is a test dependency: make test installs it"
    with cluster() as c:
        # No keepalive pings during the run: kosoku abandons a case that receives an
        # unsolicited ping (RFC-legal), and a slow case on a loaded machine would.
        gw = c.gateway("--ws-max-size", "20000000", "--ws-ping-interval", "3600")
        c.worker("tests.apps.autobahn_echo:echo")
        args = [kosoku, "-m", "fuzzingclient", "-p", "4", "-o", str(tmp_path)]
        for section in SECTIONS:
            args += ["-i", section]
        subprocess.run([*args, f"127.0.0.1:{gw.ready['port']}"], check=False,
                       capture_output=True, timeout=240)
    index = json.loads((tmp_path / "index.json").read_text())
    results = {case: r["behavior"] for agent in index.values() for case, r in agent.items()}
    counts = collections.Counter(results.values())
    failed = sorted(case for case, behavior in results.items() if behavior == "FAILED")
    assert len(results) >= 240 and failed == [], (counts, failed)
