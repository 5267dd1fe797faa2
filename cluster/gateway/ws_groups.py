"""Groups and presence at one gateway: which connections here are in which group.

Membership lives here, with the connections; a broadcast from any worker is one
message to each gateway that holds its group, fanned out here. A group's first
member here is announced to every worker (group_notices.py), and what is written to
the connections that joined it is held until every worker has read that notice, so
no broadcast sent after a member saw its join can miss it.
"""

from __future__ import annotations

from cluster.gateway.group_notices import GroupNotices
from cluster.gateway.ws_session import Session


class Groups:
    def __init__(self, notices: GroupNotices) -> None:
        self.notices = notices
        self.members: dict[str, set[int]] = {}  # group -> its connections here
        self.round: dict[str, int] = {}  # group -> the notice of its first member
        self.quiet: dict[int, set[int]] = {}  # notice -> connections held until it is read

    def join(self, session: Session, group: str) -> None:
        members = self.members.get(group)
        notices = self.notices
        if members is None:
            members = self.members[group] = set()
            self.round[group] = notices.changed(group, True)
        members.add(session.conn)
        session.groups.add(group)
        round_ = self.round.get(group, 0)
        if round_ > notices.acked and round_ > session.quiet_until:
            session.quiet_until = round_
            self.quiet.setdefault(round_, set()).add(session.conn)

    def leave(self, session: Session, group: str) -> None:
        session.groups.discard(group)
        self._remove(group, session.conn)

    def leave_all(self, session: Session) -> None:
        """The connection ended."""
        for group in session.groups:
            self._remove(group, session.conn)
        session.groups.clear()

    def _remove(self, group: str, conn: int) -> None:
        """Take `conn` out of `group`; a group left empty is forgotten."""
        members = self.members.get(group)
        if members is not None:
            members.discard(conn)
            if not members:
                del self.members[group]
                self.round.pop(group, None)
                self.notices.changed(group, False)

    def released(self, acked: int) -> list[int]:
        """Notices up to `acked` are read by every worker: the connections that were
        held for them (those still held by a later notice stay quiet)."""
        conns: list[int] = []
        for round_ in [r for r in self.quiet if r <= acked]:
            conns.extend(self.quiet.pop(round_))
        return conns

    def of(self, group: str) -> set[int]:
        """The group's connections here (none: an empty set)."""
        return self.members.get(group, set())

    def listed(self, group: str) -> list[int]:
        """The group's connections here, in order (a worker's `members()` query)."""
        return sorted(self.members.get(group, ()))

    def names(self) -> list[str]:
        """Every group held here, in order."""
        return sorted(self.members)
