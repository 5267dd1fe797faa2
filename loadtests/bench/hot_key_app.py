"""The hot-key benchmark's app: every request increments one counter all workers
share (`GET /`, so wrk needs no script)."""

from __future__ import annotations

from typing import Any

from cluster import App

app = App()


@app.route("/")
def hit(req: dict[str, Any]) -> dict[str, Any]:
    return {"status": 200, "body": {"n": req["state"].incr("hits")}}


async_app = App()


@async_app.route("/")
async def ahit(req: dict[str, Any]) -> dict[str, Any]:
    """The same as a coroutine: as many increments in flight as the worker's
    --concurrency, not its --threads."""
    return {"status": 200, "body": {"n": await req["state"].aincr("hits")}}
