"""A worker's view of which gateways hold members of which groups, so that a
broadcast goes only to those (cluster/gateway/group_notices.py tells it).

A gateway counts as a holder of a group:
- from the moment this worker sends it a join of that group (its own later
  broadcasts follow the join on the same ordered link), and
- from the gateway's notice that the group got its first member there,
until a notice says the gateway lost its last one, if that notice was written after
the gateway had read this worker's last join of the group (`seen` against the
number `n` of the action message that carried it). A notice that crossed our
join is not the truth about it.
"""

from __future__ import annotations

from typing import Any

from cluster.plumbing import wire

JOINS = (wire.JOIN, wire.SUBSCRIBE)


class GroupView:
    def __init__(self) -> None:
        self.holders: dict[str, set[str]] = {}  # group -> gateway ids
        self.held: dict[str, set[str]] = {}  # gateway id -> groups
        self.joined: dict[tuple[str, str], int] = {}  # (gateway, group) -> n of our last join

    def sending(self, gateway_id: str, n: int, actions: list[Any]) -> None:
        """Action message `n` goes to the gateway: note the joins in it."""
        for action in actions:
            if type(action) is list and len(action) > 2 and action[0] in JOINS and \
                    type(action[2]) is str:
                self.joined[(gateway_id, action[2])] = n
                self._add(gateway_id, action[2])

    def on_notice(self, gateway_id: str, msg: dict[str, Any]) -> None:
        seen = msg["seen"]
        held = {g for g in msg["held"] if type(g) is str}
        if msg["full"]:
            for group in list(self.held.get(gateway_id, ())):
                if group not in held:
                    self._drop(gateway_id, group, seen)
        for group in held:
            self._add(gateway_id, group)
        for group in msg["dropped"]:
            if type(group) is str:
                self._drop(gateway_id, group, seen)

    def gateway_gone(self, gateway_id: str) -> None:
        for group in self.held.pop(gateway_id, set()):
            holders = self.holders.get(group)
            if holders is not None:
                holders.discard(gateway_id)
                if not holders:
                    del self.holders[group]
        for key in [k for k in self.joined if k[0] == gateway_id]:
            del self.joined[key]

    def gateways(self, group: str) -> set[str]:
        return self.holders.get(group, set())

    def _add(self, gateway_id: str, group: str) -> None:
        self.holders.setdefault(group, set()).add(gateway_id)
        self.held.setdefault(gateway_id, set()).add(group)

    def _drop(self, gateway_id: str, group: str, seen: int) -> None:
        if self.joined.get((gateway_id, group), 0) > seen:
            return  # our join of it crossed this notice: a `held` one follows
        self.joined.pop((gateway_id, group), None)
        holders = self.holders.get(group)
        if holders is not None:
            holders.discard(gateway_id)
            if not holders:
                del self.holders[group]
        groups = self.held.get(gateway_id)
        if groups is not None:
            groups.discard(group)
