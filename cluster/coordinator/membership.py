"""The membership table: who is in the cluster, at which sequence number.

Pure data and time passed in: no sockets, no clock. Every change (a join, a leave,
an expiry) increments `seq`, so a member that sees a larger number in a heartbeat
knows it missed an update and asks for the whole table again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Member:
    id: str
    role: str
    info: dict[str, Any]
    last_seen: float

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "role": self.role, **self.info}


class Membership:
    def __init__(self, expiry: float) -> None:
        self.expiry = expiry
        self.seq = 0
        self.members: dict[str, Member] = {}

    def register(self, member_id: str, role: str, info: dict[str, Any], now: float) -> bool:
        """Add or refresh a member; True when the published table changed."""
        known = self.members.get(member_id)
        if known is not None and known.role == role and known.info == info:
            known.last_seen = now
            return False
        self.members[member_id] = Member(member_id, role, info, now)
        self.seq += 1
        return True

    def heartbeat(self, member_id: str, now: float) -> bool:
        """Refresh a member; False when it is unknown and must register again."""
        member = self.members.get(member_id)
        if member is None:
            return False
        member.last_seen = now
        return True

    def leave(self, member_id: str) -> bool:
        if self.members.pop(member_id, None) is None:
            return False
        self.seq += 1
        return True

    def expire(self, now: float) -> list[Member]:
        """Drop every member silent for longer than the expiry; return them."""
        gone = [m for m in self.members.values() if now - m.last_seen > self.expiry]
        for member in gone:
            del self.members[member.id]
        if gone:
            self.seq += 1
        return gone

    def snapshot(self) -> list[dict[str, Any]]:
        return [m.describe() for m in self.members.values()]
