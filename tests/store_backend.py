"""An in-process backend for the state view: a real StateStore, no sockets."""

from __future__ import annotations

from typing import Any

from cluster.coordinator.store import StateStore, StoreLimits


class StoreBackend:
    """The view's backend over a real StateStore, in process (what the worker's
    StateClient does over ZeroMQ)."""

    def __init__(self) -> None:
        self.store = StateStore(StoreLimits(max_value=100, max_keys=5))
        self.calls: list[list[list[Any]]] = []

    def read(self, key: str) -> Any:
        entry = self.store.get(key, 0.0)
        if entry is None:
            raise KeyError(key)
        return entry[0]

    def live_keys(self) -> list[str]:
        return list(self.store.data)

    def framework(self) -> dict[str, Any]:
        return {"WORKER": "wk-1"}

    def call(self, ops: list[list[Any]]) -> list[Any]:
        self.calls.append(ops)
        return self.store.apply(ops, 0.0)[0]

    async def acall(self, ops: list[list[Any]]) -> list[Any]:
        return self.call(ops)
