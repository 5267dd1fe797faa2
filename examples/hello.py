"""The seed's plain function: `fun(req, state) -> (msg, state)`.

    cluster run --handler examples.hello:fun
    curl -i http://127.0.0.1:8000/
"""

from typing import Any


def fun(req: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    # WORKER is a framework key (upper case): the id of the worker running this call.
    msg = {"status": 200, "headers": {"X-Worker": state["WORKER"]}, "body": "hello\n"}
    return msg, state


async def afun(req: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any],
                                                                    dict[str, Any]]:
    """The same, as a coroutine: runs on the worker's loop, no thread hop."""
    msg = {"status": 200, "headers": {"X-Worker": state["WORKER"]}, "body": "hello\n"}
    return msg, state
