from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import httpclient


@pytest.fixture(autouse=True)
def _close_client_sockets() -> Iterator[None]:
    yield
    while httpclient.OPEN:
        httpclient.OPEN.pop().close()
