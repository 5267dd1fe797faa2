"""CI's locust smoke run: 10 seconds of the real locustfile against `cluster run`,
failing on any error (the same runner as `make loadtest`)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

NAMES = {"/hello", "/routes/hello/<name>", "/counter", "chat broadcast round trip"}


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_locust_smoke_run_has_no_errors(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "loadtests.run_locust", "--seconds", "10",
                          "--users", "10", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "locust.html").stat().st_size > 0
    with open(tmp_path / "locust_stats.csv") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert set(rows) >= NAMES, rows.keys()
    for name in NAMES:
        assert int(rows[name]["Request Count"]) > 0, name
        assert int(rows[name]["Failure Count"]) == 0, name
