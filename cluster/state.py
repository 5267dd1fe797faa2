"""Shared state as a handler sees it: a mutable mapping over the worker's replica.

    def fun(req, state):
        state['greeting'] = 'hi'          # buffered; sent as one batch on return
        n = state.incr('hits')            # atomic, through the coordinator
        return {'body': str(n)}, state

Reads are local (the replica, under this handler's own pending writes, so a handler
reads its own writes). Plain writes (`state[k] = v`, `del state[k]`, `update`, or
returning a new dict) are buffered and sent as one atomic batch when the handler
returns; the response waits for the coordinator's acknowledgement. Atomic
operations (`incr`, `cas`, `setdefault`, `delete`, `set` with `ttl`) go to the
coordinator at once: call them in sync handlers, and `await` their `a`-prefixed
twins (`aincr`, ...) in async ones.

Keys that begin with an upper-case letter are the framework's and read-only.
When the coordinator cannot be reached, reads keep working from the replica and
writes raise `StateUnavailable` (a 503 unless the handler catches it).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any, Protocol

from cluster.errors import ReadOnlyKey, StateError
from cluster.plumbing.state_keys import framework_key

_MISSING = object()


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise StateError("state keys are non-empty strings")
    if framework_key(key):
        raise ReadOnlyKey(f"{key!r} begins with an upper-case letter: it is the framework's")
    return key


class Backend(Protocol):
    """What a view needs from the worker: its replica and a way to the coordinator."""

    def read(self, key: str) -> Any: ...  # the value; KeyError when absent or expired

    def live_keys(self) -> list[str]: ...

    def framework(self) -> dict[str, Any]: ...

    def call(self, ops: list[list[Any]]) -> list[Any]: ...  # blocking; not on the loop

    async def acall(self, ops: list[list[Any]]) -> list[Any]: ...


class SharedState(MutableMapping[str, Any]):
    """One handler call's view of the shared state; see the module docstring."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._pending: dict[str, Any] = {}  # key -> value, or _MISSING for a delete

    # -- reads -------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if isinstance(key, str) and framework_key(key):
            return self._backend.framework()[key]
        if key in self._pending:
            value = self._pending[key]
            if value is _MISSING:
                raise KeyError(key)
            return value
        return self._backend.read(key)

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        seen = set()
        for key in self._backend.live_keys():
            seen.add(key)
            if self._pending.get(key, None) is not _MISSING:
                yield key
        for key, value in list(self._pending.items()):
            if key not in seen and value is not _MISSING:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # -- buffered writes -------------------------------------------------------
    def __setitem__(self, key: str, value: Any) -> None:
        self._pending[check_key(key)] = value

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._pending[check_key(key)] = _MISSING

    def take_batch(self) -> list[list[Any]]:
        """The buffered writes as coordinator ops, emptied (called on return)."""
        if not self._pending:
            return []
        ops = [["del", k] if v is _MISSING else ["set", k, v, 0]
               for k, v in self._pending.items()]
        self._pending.clear()
        return ops

    def absorb(self, returned: dict[str, Any]) -> None:
        """The seed returns a dict: every key whose value differs becomes a write.
        Keys it lacks are not deleted: other workers may have added them meanwhile."""
        for key, value in returned.items():
            if isinstance(key, str) and framework_key(key):
                continue
            current = self.get(key, _MISSING)
            if current is _MISSING or current != value:
                self[key] = value

    # -- atomic operations (sync: from a handler thread) -------------------------
    def _one(self, op: list[Any]) -> Any:
        self._pending.pop(op[1], None)  # the atomic result supersedes a buffered write
        return self._backend.call([op])[0]

    def incr(self, key: str, n: int = 1) -> int:
        return int(self._one(["incr", check_key(key), _int(n)]))

    def cas(self, key: str, expected: Any, new: Any) -> bool:
        return bool(self._one(["cas", check_key(key), expected, new]))

    def setdefault(self, key: str, default: Any = None) -> Any:
        return self._one(["setdefault", check_key(key), default])

    def delete(self, key: str) -> bool:
        return bool(self._one(["del", check_key(key)]))

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._one(["set", check_key(key), value, _ttl(ttl)])

    # -- their async twins -------------------------------------------------------
    async def _aone(self, op: list[Any]) -> Any:
        self._pending.pop(op[1], None)
        return (await self._backend.acall([op]))[0]

    async def aincr(self, key: str, n: int = 1) -> int:
        return int(await self._aone(["incr", check_key(key), _int(n)]))

    async def acas(self, key: str, expected: Any, new: Any) -> bool:
        return bool(await self._aone(["cas", check_key(key), expected, new]))

    async def asetdefault(self, key: str, default: Any = None) -> Any:
        return await self._aone(["setdefault", check_key(key), default])

    async def adelete(self, key: str) -> bool:
        return bool(await self._aone(["del", check_key(key)]))

    async def aset(self, key: str, value: Any, ttl: float | None = None) -> None:
        await self._aone(["set", check_key(key), value, _ttl(ttl)])


def _int(n: object) -> int:
    if not isinstance(n, int) or isinstance(n, bool):
        raise StateError("incr takes a whole number")
    return n


def _ttl(ttl: float | None) -> float:
    if ttl is None:
        return 0
    if not isinstance(ttl, (int, float)) or ttl <= 0:
        raise StateError("ttl is a number of seconds > 0")
    return float(ttl)
