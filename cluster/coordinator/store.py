"""The shared key-value store at the coordinator: the one sequencing point.

Pure: no I/O, time passed in. `apply(ops, now)` runs a batch of operations all or
nothing and returns their results and the changes they made; a batch that changed
anything gets the next sequence number, and the caller logs the change record and
publishes it. A change is `[key, value, expires_at]`; `value` None means deleted,
`expires_at` 0 means no expiry (wall-clock seconds otherwise: it must survive a
restart and mean the same on every machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack  # type: ignore[import-untyped]

from cluster.errors import StateError
from cluster.plumbing.state_keys import framework_key

if TYPE_CHECKING:
    from cluster.plumbing.config import StateLimits

Change = list[Any]  # [key, value or None, expires_at]


@dataclass(frozen=True)
class StoreLimits:
    max_value: int = 1024 * 1024
    max_keys: int = 1_000_000
    max_key: int = 1024
    max_ops: int = 10_000

    @classmethod
    def of(cls, config: StateLimits) -> StoreLimits:
        """--max-value and --max-keys, from whichever process checks them."""
        return cls(max_value=config.max_value, max_keys=config.max_keys)


class StateStore:
    def __init__(self, limits: StoreLimits) -> None:
        self.limits = limits
        self.data: dict[str, tuple[Any, float]] = {}  # key -> (value, expires_at)
        self.seq = 0

    # -- reading ---------------------------------------------------------------
    def get(self, key: str, now: float) -> tuple[Any, float] | None:
        entry = self.data.get(key)
        if entry is None or (entry[1] and entry[1] <= now):
            return None
        return entry

    def entries(self) -> list[Change]:
        return [[k, v, exp] for k, (v, exp) in self.data.items()]

    # -- writing ---------------------------------------------------------------
    def apply(self, ops: list[Any], now: float) -> tuple[list[Any], list[Change]]:
        """Run `ops` atomically: all take effect, or a StateError and none do."""
        if not isinstance(ops, list) or not ops or len(ops) > self.limits.max_ops:
            raise StateError(f"a batch holds 1 to {self.limits.max_ops} operations")
        view: dict[str, tuple[Any, float] | None] = {}  # this batch's writes so far
        results: list[Any] = []

        def current(key: str) -> tuple[Any, float] | None:
            return view[key] if key in view else self.get(key, now)

        for op in ops:
            if not isinstance(op, list) or not op or not isinstance(op[0], str):
                raise StateError("an operation is [name, key, ...]")
            name, args = op[0], op[1:]
            key = self._key(args[0] if args else None)
            entry = current(key)
            if name == "set" and len(args) == 3:
                value, ttl = self._value(args[1]), args[2]
                if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl < 0:
                    raise StateError("ttl is a number of seconds >= 0")
                view[key] = (value, now + ttl if ttl else 0)
                results.append(None)
            elif name == "del" and len(args) == 1:
                view[key] = None
                results.append(entry is not None)
            elif name == "incr" and len(args) == 2:
                n = args[1]
                base = 0 if entry is None else entry[0]
                if not isinstance(n, int) or isinstance(n, bool) or \
                        not isinstance(base, int) or isinstance(base, bool):
                    raise StateError(f"incr needs whole numbers; {key!r} holds "
                                     f"{type(base).__name__}")
                value = base + n
                if not -(1 << 63) <= value < (1 << 63):
                    raise StateError(f"incr of {key!r} leaves 64 bits")
                view[key] = (value, 0 if entry is None else entry[1])
                results.append(value)
            elif name == "cas" and len(args) == 3:
                old = None if entry is None else entry[0]
                if old == args[1]:
                    view[key] = (self._value(args[2]), 0) if args[2] is not None else None
                    results.append(True)
                else:
                    results.append(False)
            elif name == "setdefault" and len(args) == 2:
                if entry is None:
                    view[key] = (self._value(args[1]), 0)
                    results.append(args[1])
                else:
                    results.append(entry[0])
            else:
                raise StateError(f"unknown operation {name!r} with {len(args)} arguments")

        new_keys = sum(1 for k, e in view.items() if e is not None and k not in self.data)
        if new_keys and len(self.data) + new_keys > self.limits.max_keys:
            raise StateError(f"the store holds at most {self.limits.max_keys} keys")
        changes = [[k, None, 0] if e is None else [k, e[0], e[1]] for k, e in view.items()
                   if not (e is None and k not in self.data)]
        if changes:
            self.seq += 1
            self.commit(changes)
        return results, changes

    def commit(self, changes: list[Change]) -> None:
        """Make changes take effect (also used to replay the log on start)."""
        for key, value, expires in changes:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = (value, expires)

    def expire(self, now: float) -> list[Change]:
        """Deletions for every key past its expiry, as one change record (or none)."""
        gone = [[k, None, 0] for k, (_, exp) in self.data.items() if exp and exp <= now]
        if gone:
            self.seq += 1
            self.commit(gone)
        return gone

    def _key(self, key: object) -> str:
        if not isinstance(key, str) or not key or len(key) > self.limits.max_key:
            raise StateError(f"keys are strings of 1 to {self.limits.max_key} characters")
        if framework_key(key):
            raise StateError(f"{key!r} begins with an upper-case letter: it is the framework's")
        return key

    def _value(self, value: Any) -> Any:
        if value is None:
            raise StateError("None is not a storable value; delete the key instead")
        size = len(msgpack.packb(value, use_bin_type=True))
        if size > self.limits.max_value:
            raise StateError(f"value of {size} bytes is over the {self.limits.max_value} limit")
        return value
