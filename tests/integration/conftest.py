from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Cluster, Proc, cluster

APP = "tests.apps.handlers:app"
ECHO = "tests.apps.handlers:echo"


@pytest.fixture(scope="module")
def app_cluster() -> Iterator[tuple[Cluster, Proc]]:
    """One gateway, two workers running the test App."""
    with cluster() as c:
        gw = c.gateway("--max-body", "1000", "--request-timeout", "5")
        c.worker(APP, "--threads", "4")
        c.worker(APP, "--threads", "4")
        yield c, gw


@pytest.fixture(scope="module")
def echo_cluster() -> Iterator[tuple[Cluster, Proc]]:
    with cluster() as c:
        gw = c.gateway()
        c.worker(ECHO)
        yield c, gw
