"""A worker's view of which gateways hold which groups: its own joins count at once,
a notice that crossed a later join does not undo it, a gateway that goes takes its
groups along."""

from __future__ import annotations

from typing import Any

from cluster.plumbing import wire
from cluster.worker.group_view import GroupView


def notice(held: list[str] = [], dropped: list[str] = [], seen: int = 0,  # noqa: B006
           full: bool = False) -> dict[str, Any]:
    return wire.envelope(wire.WS_GROUPS, held=held, dropped=dropped, seen=seen, full=full,
                         r=1)


def test_a_notice_adds_and_drops_holders() -> None:
    view = GroupView()
    view.on_notice("g1", notice(held=["room"]))
    view.on_notice("g2", notice(held=["room", "lobby"]))
    assert view.gateways("room") == {"g1", "g2"} and view.gateways("lobby") == {"g2"}
    view.on_notice("g1", notice(dropped=["room"]))
    assert view.gateways("room") == {"g2"}
    assert view.gateways("nowhere") == set()


def test_our_own_join_counts_at_once() -> None:
    view = GroupView()
    view.sending("g1", 7, [wire.join(3, "room")])
    assert view.gateways("room") == {"g1"}
    view.sending("g1", 8, [wire.subscribe(4, "news", None, None)])
    assert view.gateways("news") == {"g1"}


def test_a_drop_that_crossed_our_later_join_is_not_the_truth() -> None:
    view = GroupView()
    view.on_notice("g1", notice(held=["room"]))
    view.sending("g1", 9, [wire.join(3, "room")])
    view.on_notice("g1", notice(dropped=["room"], seen=8))  # written before it read 9
    assert view.gateways("room") == {"g1"}
    view.on_notice("g1", notice(dropped=["room"], seen=9))  # after: the member left
    assert view.gateways("room") == set()


def test_a_full_notice_replaces_what_the_gateway_holds() -> None:
    view = GroupView()
    view.on_notice("g1", notice(held=["a", "b"]))
    view.sending("g1", 5, [wire.join(1, "c")])
    view.on_notice("g1", notice(held=["b"], seen=4, full=True))
    assert view.gateways("a") == set() and view.gateways("b") == {"g1"}
    assert view.gateways("c") == {"g1"}  # our join was not read yet


def test_a_gateway_that_goes_takes_its_groups() -> None:
    view = GroupView()
    view.on_notice("g1", notice(held=["room"]))
    view.on_notice("g2", notice(held=["room"]))
    view.gateway_gone("g1")
    assert view.gateways("room") == {"g2"}
    view.gateway_gone("g2")
    assert view.gateways("room") == set() and not view.holders
