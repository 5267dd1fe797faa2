"""The chaos run, short: 20 seconds of faults on three namespaced hosts under mixed
traffic, then its checker (`make chaos` runs it longer, three times in a row)."""

from __future__ import annotations

import pytest

from loadtests.chaos import run

pytestmark = pytest.mark.timeout(240)


def test_a_short_chaos_run_loses_nothing() -> None:
    ok, report = run(seconds=20, seed=7, every=6)
    assert ok, report
