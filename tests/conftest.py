from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from cluster.plumbing.security import ROLE_KEYS, keygen
from tests import httpclient


@pytest.fixture(autouse=True)
def _close_client_sockets() -> Iterator[None]:
    yield
    while httpclient.OPEN:
        httpclient.OPEN.pop().close()


@pytest.fixture(autouse=True, scope="session")
def _keys_for_lone_commands() -> Iterator[None]:
    """Commands a test starts by itself (`cluster worker ...` to see it fail, `cluster
    run`) find CURVE keys as a deployment gives them: CLUSTER_KEYS. Clusters built by
    tests.harness have keys of their own."""
    directory = tempfile.mkdtemp(prefix="cluster-test-keys-")
    keygen(directory, ROLE_KEYS)
    os.environ["CLUSTER_KEYS"] = directory
    yield
    del os.environ["CLUSTER_KEYS"]
    shutil.rmtree(directory, ignore_errors=True)
