"""Shard keys at one gateway: a room's connections all go to one worker, and move,
in order, when the workers change.

A handler may name a shard key when it accepts (a room, a user id): the connection
is then handed (WS_ADOPT) to the worker that rendezvous hashing picks for the key,
the same one on every gateway, so a room's events run on one worker, in order
there. A worker that leaves moves only its own keys (its connections close with
1012 and land on the key's next owner). A worker that joins takes over the keys it
now wins: their connections here stop being read until the old owner has answered
everything they sent, then move to it (WS_RELEASE to the old owner, WS_ADOPT to
the new), with no message lost or reordered.
"""

from __future__ import annotations

from cluster.gateway.ws_session import Session, WorkerPosts, rendezvous
from cluster.plumbing import wire


class ShardMoves:
    def __init__(self, sessions: dict[int, Session], posts: WorkerPosts) -> None:
        self.sessions = sessions  # the hub's: every connection here, by number
        self.posts = posts
        self.shards: dict[str, set[int]] = {}  # shard key -> its connections here
        self.moving: dict[str, bytes] = {}  # shard key -> the worker it moves to
        self.moves = 0

    def place(self, session: Session, shard: str) -> None:
        """Hand a connection just accepted with `shard` to the key's worker (the worker
        that accepted it forgot it when it named the key)."""
        session.shard = shard
        self.shards.setdefault(shard, set()).add(session.conn)
        owner = self.moving.get(shard) or rendezvous(shard, self.posts.live_workers())
        if owner is not None:
            session.worker = owner
        self._adopt(session)

    def _adopt(self, session: Session) -> None:
        assert session.fields is not None and session.shard is not None
        self.posts.post_to(session.worker, wire.envelope(
            wire.WS_ADOPT, conn=session.conn, shard=session.shard, **session.fields))

    def rebalance(self) -> None:
        """The live workers changed: every shard key here whose owner is now another
        worker starts moving there (its connections are held until the old owner has
        answered what they sent). Moves toward a worker that left are re-aimed."""
        workers = self.posts.live_workers()
        for shard, conns in self.shards.items():
            owner = rendezvous(shard, workers)
            if owner is None:
                continue
            sessions = [self.sessions[c] for c in conns]
            if all(s.worker == owner for s in sessions):
                if self.moving.pop(shard, None) is not None:
                    for session in sessions:
                        _release_hold(session)
                continue
            self.moving[shard] = owner
            for session in sessions:
                if not session.held:
                    session.held = True
                    if not session.reading_paused:
                        session.transport.pause_reading()
        for shard in list(self.moving):
            self._try_move(shard)

    def answered(self, session: Session) -> None:
        """Its worker answered what it sent: a move that waited for it may go."""
        if session.inflight == 0 and session.shard in self.moving:
            self._try_move(session.shard)

    def _try_move(self, shard: str) -> None:
        """Move the shard once nothing its connections sent is still at a worker."""
        owner = self.moving[shard]
        sessions = [self.sessions[c] for c in self.shards.get(shard, ())]
        if any(s.inflight for s in sessions):
            return
        del self.moving[shard]
        self.moves += 1
        for session in sessions:
            if session.worker != owner:
                self.posts.post_to(session.worker,
                                   wire.envelope(wire.WS_RELEASE, conn=session.conn))
                session.worker = owner
                self._adopt(session)
            _release_hold(session)

    def forget(self, session: Session) -> None:
        """The connection ended (the hub dropped it)."""
        shard = session.shard
        if shard is None:
            return
        conns = self.shards[shard]
        conns.discard(session.conn)
        if not conns:
            del self.shards[shard]
            self.moving.pop(shard, None)
        elif shard in self.moving:
            self._try_move(shard)  # it may have been the one still waited for


def _release_hold(session: Session) -> None:
    if session.held:
        session.held = False
        if not session.reading_paused:
            session.transport.resume_reading()
