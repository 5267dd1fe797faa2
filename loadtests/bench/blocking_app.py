"""The blocking benchmark's handler: 10 ms of blocking work (a sleep stands in for a
database call), then a small answer."""

from __future__ import annotations

import time
from typing import Any

WORK_SECONDS = 0.010


def fun(req: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    time.sleep(WORK_SECONDS)  # the simulated blocking work being measured
    return {"status": 200, "body": "done\n"}
