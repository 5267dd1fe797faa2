"""WebSocket sessions at one gateway: their workers, their actions, their output.

Theory of operation
-------------------
Every event of one connection goes to one worker, chosen when it opens by
rendezvous hashing of the connection id over the live workers (so a worker that
leaves moves only its own connections), and handled there in order. Workers answer
with actions: accept or reject a connection, send to one, close one, join or leave a
group, broadcast to a group. A worker that dies takes its connections with it: they
are closed with 1012 (service restart) so clients reconnect and land on a live
worker.

The hub's parts, one job each:
- `Groups` (ws_groups.py): groups and presence, and the group notices that hold a
  new member's output until every worker knows the group is held here;
- `GroupFeed` (ws_history.py): numbered group messages and recovery at a reconnect;
- `ShardMoves` (ws_shards.py): connections sharded by a key, and their moves;
- this module: the sessions, the workers' actions on them, and their output.

Output per connection is bounded: a client that still has more than `--ws-max-queue`
unsent bytes when more output comes is closed with 1013 and counted, so a slow
reader costs at most that queue plus one batch of output.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from collections.abc import Callable
from typing import Any

from cluster.gateway.client_stream import ClientStream
from cluster.gateway.group_notices import GroupNotices
from cluster.gateway.http_core import error_response
from cluster.gateway.ws_core import Binary, Closed, Event, Text, WebSocketCore
from cluster.gateway.ws_groups import Groups
from cluster.gateway.ws_history import GroupFeed, NoHistory
from cluster.gateway.ws_session import Session, Transport, WorkerPosts, rendezvous
from cluster.gateway.ws_shards import ShardMoves
from cluster.plumbing import wire

log = logging.getLogger("cluster.gateway.ws")

# Messages of one connection handed to its worker and not yet handled. Past the
# high mark the gateway stops reading that client (TCP pushes back on it); below the
# low mark it reads again. A flooding client fills its own socket, not the worker.
WS_INFLIGHT_HIGH = 64
WS_INFLIGHT_LOW = 16

# Closes for bad client input (RFC 6455 codes), logged and counted.
PROTOCOL_ERRORS = {1002: "protocol error", 1007: "invalid data", 1009: "message too big"}

CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_GOING_AWAY = 1001


class WebSocketHub:
    def __init__(self, loop: asyncio.AbstractEventLoop, gateway_id: str,
                 posts: WorkerPosts, *, max_queue: int, ping_interval: float,
                 ping_timeout: float, open_timeout: float) -> None:
        self.loop = loop
        self.gateway_id = gateway_id
        self.posts = posts
        self.max_queue = max_queue
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.sessions: dict[int, Session] = {}
        # Tells the workers which groups are held here; it calls `release`.
        self.notices = GroupNotices(loop, posts, self)
        self.groups = Groups(self.notices)
        self.shards = ShardMoves(self.sessions, posts)
        self.slow_closes = 0
        self.push_missing = 0
        self.messages_in = 0
        self.protocol_errors: dict[int, int] = {}  # close code -> connections it closed
        self.messages_out = 0
        self.broadcasts = 0
        self.broadcasts_unheld = 0  # for a group with no member here: the workers' view lagged
        self.bytes_out = 0
        # Connections with output from workers, written once at the end of the loop
        # pass: a pass that carries several broadcasts makes one write per client, not
        # one per message (the write syscall is most of a broadcast's cost).
        self._unflushed: set[int] = set()
        self._flush_scheduled = False
        # Numbered group messages and recovery (cluster.publish); the gateway gives
        # it where to ask for history once it has a coordinator link or etcd.
        self.feed = GroupFeed(self, NoHistory(), open_timeout)
        self.event_streams = 0  # opened so far
        # What each action on a connection does; broadcasts, to a group, apart.
        self._run: dict[str, Callable[[Session, list[Any], set[int]], None]] = {
            wire.ACCEPT: self._act_accept, wire.REJECT: self._act_reject,
            wire.SEND: self._act_send, wire.CLOSE: self._act_close, wire.ACK: self._act_ack,
            wire.JOIN: self._act_join, wire.LEAVE: self._act_leave,
            wire.SUBSCRIBE: self._act_subscribe}

    def members_of(self, group: str) -> set[int]:
        return self.groups.of(group)

    # -- from client connections ------------------------------------------------

    def open(self, conn: int, core: WebSocketCore, transport: Transport,
             request_fields: dict[str, Any]) -> bool:
        """Ask the connection's worker whether to accept; False: no worker at all."""
        worker = rendezvous(f"{self.gateway_id}/{conn}", self.posts.live_workers())
        if worker is None:
            return False
        session = Session(conn, core, transport, worker, self.loop.time(), request_fields)
        self.sessions[conn] = session
        self.posts.post_to(worker, wire.envelope(wire.WS_OPEN, conn=conn, **request_fields))
        return True

    def open_event_stream(self, conn: int, core: ClientStream, transport: Transport,
                          head: bytes, join: list[str],
                          subscribe: tuple[str, str | None, int | None] | None) -> Session:
        """A response that became a stream of Server-Sent Events (its worker answered
        with `events`): a member of its groups like an accepted WebSocket, and
        reachable by push, but no worker's (it sends nothing upstream). `head` goes
        out with its first flush, after the workers have read of its groups."""
        session = Session(conn, core, transport, b"", self.loop.time(), None)
        session.accepted = True
        session.next_ping = session.opened_at + self.ping_interval
        session.handshake = head
        self.sessions[conn] = session
        self.event_streams += 1
        touched = self._unflushed
        for group in join:
            self.groups.join(session, group)
        if subscribe is not None:
            self._act_subscribe(session, [wire.SUBSCRIBE, conn, *subscribe], touched)
        self.flush(session)
        return session

    def on_events(self, session: Session, events: list[Event]) -> None:
        for event in events:
            if not isinstance(event, Closed):
                self.messages_in += 1
                session.inflight += 1
            if isinstance(event, Text):
                self.posts.post_to(session.worker, wire.envelope(wire.WS_MESSAGE, conn=session.conn,
                                                        text=event.data))
            elif isinstance(event, Binary):
                self.posts.post_to(session.worker, wire.envelope(wire.WS_MESSAGE, conn=session.conn,
                                                        bytes=event.data))
            elif isinstance(event, Closed):
                if event.code in PROTOCOL_ERRORS:
                    self.protocol_errors[event.code] = \
                        self.protocol_errors.get(event.code, 0) + 1
                    log.info("WebSocket %s/%s closed %d: %s", self.gateway_id, session.conn,
                             event.code, event.reason or PROTOCOL_ERRORS[event.code])
                self._finish(session, event.code, event.reason)
        if session.inflight >= WS_INFLIGHT_HIGH and not session.reading_paused and \
                not session.closed:
            session.reading_paused = True
            session.transport.pause_reading()
        self.flush(session)

    def connection_lost(self, session: Session) -> None:
        if not session.closed:
            self._finish(session, 1006, "")

    # -- from workers -------------------------------------------------------------
    def on_actions(self, peer: bytes, msg: dict[str, Any]) -> None:
        self.notices.saw(peer, msg)
        touched = self._unflushed
        run = self._run
        for action in msg["actions"]:
            fault = wire.check_action(action)
            if fault is not None:
                log.warning("bad WebSocket action from a worker (%s); ignored", fault)
                continue
            if action[0] == wire.BROADCAST:
                self._broadcast(action, touched)
                continue
            session = self.sessions.get(action[1])
            if session is None or session.closed:
                if action[0] == wire.SEND:
                    self.push_missing += 1
                    log.info("push to connection %s/%s, which is gone (%d so far)",
                             self.gateway_id, action[1], self.push_missing)
                continue
            try:
                run[action[0]](session, action, touched)
            except Exception as exc:  # well formed, yet refused below us (a bad close code)
                log.warning("WebSocket action %r from a worker failed: %s", action[0], exc)
        if touched and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_unflushed)

    def queue_numbered(self, conn: int, text: str, group: str, event_id: str) -> None:
        """A published message of `group` (or a recovery's announcement: no id)."""
        session = self.sessions.get(conn)
        if session is None or not session.accepted or not session.core.is_open():
            return
        session.core.send_numbered(text, group, event_id)
        self.messages_out += 1
        self._unflushed.add(conn)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._unflushed and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_unflushed)

    def on_history(self, msg: dict[str, Any]) -> None:
        """A numbered group message, or an answer to a recovery, from the coordinator."""
        if msg["k"] == wire.HISTORY_MESSAGE:
            self.feed.on_message(msg["group"], msg["epoch"], msg["offset"], msg.get("data"))
        elif msg["k"] == wire.HISTORY_ANSWER:
            self.feed.on_answer(msg["rid"], msg["epoch"], msg["messages"], msg["complete"])

    def _flush_unflushed(self) -> None:
        self._flush_scheduled = False
        touched, self._unflushed = self._unflushed, set()
        for conn in touched:
            session = self.sessions.get(conn)
            if session is not None:
                self.flush(session)

    # -- the actions (wire.ACTIONS), each on a connection here that is still open -----
    def _broadcast(self, action: list[Any], touched: set[int]) -> None:
        self.broadcasts += 1
        _, group, data, exclude = action
        members = self.groups.members.get(group)
        if members is None:
            self.broadcasts_unheld += 1
            return
        for conn in list(members):
            if conn != exclude:
                self._send(conn, data, touched)

    def _act_accept(self, session: Session, action: list[Any], touched: set[int]) -> None:
        self._accept(session, action[2], action[3], action[4])
        touched.add(session.conn)  # its 101 goes out with the pass's flush

    def _act_reject(self, session: Session, action: list[Any], _touched: set[int]) -> None:
        self._reject(session, action[2], action[3])

    def _act_send(self, session: Session, action: list[Any], touched: set[int]) -> None:
        self._send(session.conn, action[2], touched)

    def _act_close(self, session: Session, action: list[Any], touched: set[int]) -> None:
        session.core.close(action[2], action[3][:120])
        touched.add(session.conn)

    def _act_ack(self, session: Session, action: list[Any], _touched: set[int]) -> None:
        session.inflight = max(0, session.inflight - action[2])
        if session.reading_paused and session.inflight <= WS_INFLIGHT_LOW:
            session.reading_paused = False
            if not session.held:
                session.transport.resume_reading()
        self.shards.answered(session)

    def _act_join(self, session: Session, action: list[Any], _touched: set[int]) -> None:
        self.groups.join(session, action[2])

    def release(self, acked: int) -> None:
        """Group notices up to `acked` are read by every worker: write what was held."""
        for conn in self.groups.released(acked):
            session = self.sessions.get(conn)
            if session is not None and session.quiet_until <= acked:
                session.quiet_until = 0
                self.flush(session)

    def _act_leave(self, session: Session, action: list[Any], _touched: set[int]) -> None:
        self.groups.leave(session, action[2])

    def _act_subscribe(self, session: Session, action: list[Any], touched: set[int]) -> None:
        """Join, and recover what was missed since (epoch, offset)."""
        self.groups.join(session, action[2])
        if action[3] is not None and action[4] is not None:
            self.feed.subscribe(session.conn, action[2], action[3], action[4],
                                self.loop.time())

    def _accept(self, session: Session, subprotocol: str | None, headers: list[Any],
                shard: str | None) -> None:
        core = session.core
        if session.accepted or not isinstance(core, WebSocketCore):
            return
        pairs = [(h[0], h[1]) for h in headers
                 if type(h) is list and len(h) == 2 and type(h[0]) is str and type(h[1]) is str]
        status, data = core.accept(subprotocol, pairs)
        if status == 101:
            # Written at the flush that ends this pass: after a join of a group new
            # here in the same actions, it waits for the workers too (release).
            session.handshake = data
        else:
            session.transport.write(data)
            # websockets refused the handshake itself (a missing key): it wrote why.
            log.info("WebSocket handshake refused with %d", status)
            self._drop(session)
            session.transport.close()
            return
        session.accepted = True
        session.next_ping = self.loop.time() + self.ping_interval
        if shard:
            self.shards.place(session, shard)
        else:
            session.fields = None

    def _reject(self, session: Session, status: int, body: Any) -> None:
        text = body.encode() if isinstance(body, str) else body if isinstance(body, bytes) \
            else None
        # The date is made here: a refusal is rare, and the hub keeps no clock.
        date = email.utils.formatdate(usegmt=True).encode()
        session.transport.write(error_response(status if 400 <= status <= 599 else 403,
                                               date, body=text))
        self._drop(session)
        session.transport.close()

    def _send(self, conn: int, data: Any, touched: set[int]) -> None:
        session = self.sessions.get(conn)
        if session is None or not session.accepted or not session.core.is_open():
            return
        if not isinstance(data, (str, bytes)):
            raise TypeError("WebSocket data must be str or bytes")
        session.core.send(data)
        self.messages_out += 1
        touched.add(conn)

    def flush(self, session: Session) -> None:
        if session.quiet_until and session.core.is_open():
            return  # held until its group notice is read (release); a closing one is not
        data = session.core.data_to_send()
        if session.handshake:
            data, session.handshake = session.handshake + data, b""
        if data and not session.transport.is_closing():
            # Judge the backlog the client has not drained yet, before this write:
            # one message larger than the queue is fine for a client that reads.
            backlog = session.transport.get_write_buffer_size()
            session.transport.write(data)
            self.bytes_out += len(data)
            if backlog > self.max_queue and session.core.is_open():
                self.slow_closes += 1
                log.info("%s %s/%s reads too slowly (over %d bytes queued); %s",
                         "WebSocket" if session.worker else "event stream", self.gateway_id,
                         session.conn, self.max_queue, "1013" if session.worker else "cut")
                session.core.close(CLOSE_TRY_AGAIN_LATER, "too slow")
                # Its output cannot drain: drop it rather than wait for a close handshake.
                self._finish(session, CLOSE_TRY_AGAIN_LATER, "too slow")
                session.transport.close()
                return
        if session.core.close_expected() and not session.transport.is_closing():
            session.transport.close()

    # -- endings --------------------------------------------------------------------
    def _finish(self, session: Session, code: int, reason: str) -> None:
        if session.closed:
            return
        was_accepted = session.accepted
        self._drop(session)
        if was_accepted and session.worker:  # an event stream has no worker to tell
            self.posts.post_to(session.worker, wire.envelope(wire.WS_CLOSED, conn=session.conn,
                                                    code=code, reason=reason))

    def _drop(self, session: Session) -> None:
        self.feed.forget(session.conn)
        session.closed = True
        self.sessions.pop(session.conn, None)
        self.groups.leave_all(session)
        self.shards.forget(session)

    def worker_draining(self, ident: bytes) -> None:
        """It is leaving in order (a rolling restart): its accepted connections close
        with 1012, and it hears of each (ws.close), so its handler can clean up. The
        clients reconnect, to a worker that stays. Handshakes it holds, it answers."""
        for session in [s for s in self.sessions.values() if s.worker == ident]:
            if session.accepted:
                session.core.close(CLOSE_SERVICE_RESTART, "worker restarting")
                self.flush(session)
                self._finish(session, CLOSE_SERVICE_RESTART, "worker restarting")
        self.shards.rebalance()  # moves toward it go elsewhere

    def worker_gone(self, ident: bytes) -> None:
        """Its connections cannot go on in order elsewhere: 1012, the client reconnects."""
        self.notices.worker_gone(ident)
        for session in [s for s in self.sessions.values() if s.worker == ident]:
            if session.accepted:
                session.core.close(CLOSE_SERVICE_RESTART, "worker restarting")
                self.flush(session)
            else:
                self._reject(session, 502, None)
                continue
            self._drop(session)
        self.shards.rebalance()

    def check(self, session: Session, now: float) -> None:
        """One session's keepalive ping, or its close if the pong is late; a handshake
        no worker decided in time gets 504. Called for every session in turn."""
        if session.closed:
            return
        if self.feed.recovering:
            self.feed.check(session.conn, now)
        if not session.accepted:
            if now - session.opened_at > self.open_timeout:
                log.warning("WebSocket %s: no decision from the worker; 504", session.conn)
                self._reject(session, 504, None)
            return
        if session.ping_sent:
            if session.core.pongs > session.pongs_seen:
                session.pongs_seen = session.core.pongs
                session.ping_sent = 0.0
                session.next_ping = now + self.ping_interval
            elif now - session.ping_sent > self.ping_timeout:
                log.info("WebSocket %s: no pong within %.1fs; closing 1011", session.conn,
                         self.ping_timeout)
                session.core.close(1011, "keepalive ping timeout")
                self.flush(session)
                self._finish(session, 1011, "keepalive ping timeout")
                session.transport.close()
        elif now >= session.next_ping:
            session.core.ping(b"")
            session.ping_sent = now
            self.flush(session)

    def shutdown(self) -> None:
        for session in list(self.sessions.values()):
            if session.accepted:
                session.core.close(CLOSE_GOING_AWAY, "server shutting down")
                self.flush(session)


