"""The state view a handler gets, without processes: buffered writes, read-only
framework keys, atomic operations."""

from __future__ import annotations

import pytest

from cluster.errors import ReadOnlyKey, StateError
from cluster.state import SharedState
from cluster.worker.adapters import FunctionHandler, split_state
from tests.store_backend import StoreBackend


def test_view_reads_its_own_buffered_writes() -> None:
    backend = StoreBackend()
    backend.call([["set", "a", 1, 0]])
    view = SharedState(backend)
    view["b"] = 2
    del view["a"]
    assert "a" not in view and view["b"] == 2 and dict(view) == {"b": 2}
    assert backend.store.get("a", 0.0) is not None  # nothing sent yet
    assert view.take_batch() == [["set", "b", 2, 0], ["del", "a"]]
    assert view.take_batch() == []


def test_view_framework_keys_are_read_only() -> None:
    view = SharedState(StoreBackend())
    assert view["WORKER"] == "wk-1"
    with pytest.raises(ReadOnlyKey):
        view["WORKER"] = "x"
    with pytest.raises(ReadOnlyKey):
        view.incr("Counter")


def test_view_atomic_ops_go_straight_through() -> None:
    backend = StoreBackend()
    view = SharedState(backend)
    assert view.incr("n") == 1 and view.incr("n", 5) == 6
    assert view.cas("n", 6, 7) and not view.cas("n", 6, 8)
    assert view.setdefault("d", "first") == "first" and view.setdefault("d", "x") == "first"
    assert view.delete("d") and not view.delete("d")
    assert view["n"] == 7
    with pytest.raises(StateError):
        view.incr("n", 1.5)  # type: ignore[arg-type]


def test_seed_style_returned_dict_becomes_writes() -> None:
    backend = StoreBackend()
    backend.call([["set", "keep", 1, 0], ["set", "same", 2, 0]])
    view = SharedState(backend)
    msg = split_state(("ok", {"same": 2, "new": 3, "WORKER": "ignored"}), view)
    assert msg == "ok"
    assert view.take_batch() == [["set", "new", 3, 0]]  # unchanged and missing: no write


def test_function_handler_gives_each_call_its_own_view() -> None:
    handler = FunctionHandler(lambda req, state: ("ok", state), StoreBackend())
    a, b = handler.prepare({}), handler.prepare({})
    assert a.state is not b.state and a.args[1] is a.state
