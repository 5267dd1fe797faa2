"""The wire format: every ZeroMQ frame between cluster processes is one msgpack map.

Theory of operation
-------------------
An envelope is a map ``{"v": VERSION, "k": KIND, ...fields}``. Several envelopes
travelling the same way in one event-loop pass are packed into one frame of kind
``batch`` (``{"v": VERSION, "k": "batch", "m": [envelope, ...]}``): one ZeroMQ send and
one wake-up carry many requests, which is what makes the extra hop cheap.

`decode_frame` is the only door for untrusted bytes. It checks size, version, kind
and the type of every required field, and raises `WireError` for anything else, so
a process receiving a broken frame can count it, log one line and keep going.
Encoding and decoding are pure functions with no I/O.
"""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped]

from cluster.errors import WireError

# 2: kinds became words ("response", not "res"); a process of another version is
# refused at the first frame (WireError), never misread.
# 3: an outside publisher's broadcasts and pushes go by the coordinator (relay_*).
# 4: on etcd, a worker sends the sequencer the batches of one loop turn together
# (state_batches, answered with an outcome per batch), not one state_ops each.
VERSION = 4

# Coordinator <-> member (gateway, worker)
REGISTER = "register"  # member -> coordinator: join, with a description of itself
HEARTBEAT = "heartbeat"  # both ways; the coordinator's carries the membership sequence
WHO = "who"  # "I do not know you": re-register / re-hello
MEMBERS = "members"  # coordinator -> member: full membership at a sequence number
SYNC = "sync"  # member -> coordinator: send me MEMBERS, I missed an update
BYE = "bye"  # orderly leave

# Worker <-> gateway dispatch link
HELLO = "hello"  # worker -> gateway: I am here with this much credit
WELCOME = "welcome"  # gateway -> worker: hello accepted
REQUEST = "request"  # gateway -> worker: one request to handle
RESPONSE = "response"  # worker -> gateway: a response, whole or one part of a stream
GONE = "gone"  # gateway -> worker: the client of this request closed its connection
# gateway -> worker: the client took this many more bytes of a stream
STREAM_CREDIT = "stream_credit"

# Shared state (Clone pattern): requests on the coordinator link, updates on its PUB
STATE_OP = "state_ops"  # worker -> coordinator: a batch of operations, applied atomically
STATE_ACK = "state_ack"  # coordinator -> worker: results, once the change is in the log
SNAPSHOT_REQUEST = "snapshot_request"  # worker -> coordinator: send me the whole store
SNAPSHOT = "snapshot"  # coordinator -> worker: one part of the store at a sequence
UPDATE = "update"  # coordinator PUB: the changes of one sequence number
STATE_HEARTBEAT = "state_heartbeat"  # coordinator PUB: the current sequence number
# On etcd, between a worker and the elected sequencer gateway:
SEQUENCER = "sequencer"  # gateway -> worker: I commit state batches, under this token (-1: no more)
# worker -> sequencer: the batches its handlers made in one turn of its loop, each
# atomic on its own, in order; answered by one STATE_ACK with an outcome per batch
STATE_BATCHES = "state_batches"
# What became of each of those batches, in STATE_ACK's "outcomes": [code, detail]
COMMITTED = 0  # [0, results]
REFUSED = 1  # [1, why]: the batch itself is wrong (StateError); nothing applied
UNAVAILABLE = 2  # [2, why]: no quorum in time; it may have been applied
NOT_SEQUENCER = 3  # [3, why]: not applied: the worker commits it itself

# WebSocket, gateway <-> worker
WS_OPEN = "ws_open"  # gateway -> worker: a client asks to connect (ws.connect)
WS_MESSAGE = "ws_message"  # gateway -> worker: a message from a client (ws.message)
WS_CLOSED = "ws_closed"  # gateway -> worker: the connection closed (ws.close)
WS_ACTIONS = "ws_actions"  # worker -> gateway: accept/reject, send, close, join, leave, broadcast
WS_QUERY = "ws_query"  # worker -> gateway: who is in this group here?
WS_QUERY_REPLY = "ws_query_reply"  # gateway -> worker: the connection ids in that group
WS_ADOPT = "ws_adopt"  # gateway -> worker: handle this accepted connection (its shard is yours)
WS_RELEASE = "ws_release"  # gateway -> worker: its shard moved; forget this connection
# gateway -> worker: groups that got their first member here, lost their last
WS_GROUPS = "ws_groups"
WS_GROUPS_ACK = "ws_groups_ack"  # worker -> gateway: that notice (its round `r`) is read

# Group history (publish with offsets; recovery after a reconnect), via the coordinator
HISTORY_PUBLISH = "history_publish"  # worker -> coordinator: number and keep this group message
HISTORY_MESSAGE = "history_message"  # coordinator -> gateway: a numbered group message, to deliver
# gateway -> coordinator: this group's messages after (epoch, offset)
HISTORY_QUERY = "history_query"
HISTORY_ANSWER = "history_answer"  # coordinator -> gateway: them, and whether that is all of them
GROUPS_HELD = "groups_held"  # gateway -> coordinator: groups held here (WS_GROUPS_ACK answers)
GROUPS_ASK = "groups_ask"  # coordinator -> gateway: send me every group you hold (you registered)
# An outside publisher (cluster/publisher.py) -> coordinator: data for the coordinator
# to hand on as WS_ACTIONS, over its one ordered link to each gateway
RELAY_BROADCAST = "relay_broadcast"  # to every gateway that holds the group
RELAY_PUSH = "relay_push"  # to the gateway of the connection

# Deferred replies (seed Homor's suspended requests)
DEFERRED = "deferred"  # worker -> gateway: this request is answered later; my credit is free
DEFERRED_REPLY = "deferred_reply"  # any worker -> gateway: the answer to a deferred request

BATCH = "batch"

_STR = str
_INT = int
_BOOL = bool
_BYTES = bytes
_LIST = list
_MAP = dict

# Required fields and their exact types, per kind (msgpack decodes to exactly these,
# so an exact check also refuses a bool where an int is required). Optional fields
# are checked where they are used.
SCHEMA: dict[str, dict[str, type]] = {
    REGISTER: {"id": _STR, "role": _STR, "info": _MAP},
    HEARTBEAT: {"id": _STR},
    WHO: {},
    MEMBERS: {"seq": _INT, "members": _LIST},
    SYNC: {"id": _STR},
    BYE: {"id": _STR},
    HELLO: {"id": _STR, "credit": _INT},
    WELCOME: {"id": _STR},
    REQUEST: {
        "id": _INT,
        "conn": _INT,
        "method": _STR,
        "target": _STR,
        "version": _STR,
        "headers": _LIST,
        "body": _BYTES,
        "addr": _LIST,
    },
    RESPONSE: {"id": _INT, "more": _BOOL},
    GONE: {"id": _INT},
    STREAM_CREDIT: {"id": _INT, "bytes": _INT},
    STATE_OP: {"id": _STR, "rid": _INT, "ops": _LIST},
    STATE_ACK: {"rid": _INT, "ok": _BOOL},
    SNAPSHOT_REQUEST: {"id": _STR, "rid": _INT},
    SNAPSHOT: {"rid": _INT, "epoch": _STR, "seq": _INT, "entries": _LIST, "last": _BOOL},
    UPDATE: {"epoch": _STR, "seq": _INT, "changes": _LIST},
    STATE_HEARTBEAT: {"epoch": _STR, "seq": _INT},
    SEQUENCER: {"token": _INT},
    STATE_BATCHES: {"id": _STR, "rid": _INT, "batches": _LIST},
    WS_OPEN: {"conn": _INT, "target": _STR, "headers": _LIST, "subprotocols": _LIST,
              "addr": _LIST},
    WS_ADOPT: {"conn": _INT, "shard": _STR, "target": _STR, "headers": _LIST,
               "subprotocols": _LIST, "addr": _LIST},
    WS_RELEASE: {"conn": _INT},
    WS_GROUPS: {"held": _LIST, "dropped": _LIST, "seen": _INT, "full": _BOOL, "r": _INT},
    WS_GROUPS_ACK: {"r": _INT},
    WS_MESSAGE: {"conn": _INT},
    WS_CLOSED: {"conn": _INT, "code": _INT, "reason": _STR},
    WS_ACTIONS: {"actions": _LIST},
    DEFERRED: {"id": _INT},
    DEFERRED_REPLY: {"id": _INT, "status": _INT, "head": _BYTES, "body": _BYTES},
    WS_QUERY: {"rid": _INT, "group": _STR},
    HISTORY_PUBLISH: {"id": _STR, "group": _STR},
    HISTORY_MESSAGE: {"group": _STR, "epoch": _STR, "offset": _INT},
    HISTORY_QUERY: {"id": _STR, "rid": _INT, "group": _STR},
    HISTORY_ANSWER: {"rid": _INT, "epoch": _STR, "messages": _LIST, "complete": _BOOL},
    GROUPS_HELD: {"id": _STR, "held": _LIST, "dropped": _LIST, "full": _BOOL, "r": _INT},
    GROUPS_ASK: {},
    RELAY_BROADCAST: {"id": _STR, "group": _STR},  # and "data": str or bytes
    RELAY_PUSH: {"id": _STR, "gateway": _STR, "conn": _INT},  # and "data"
    WS_QUERY_REPLY: {"rid": _INT, "conns": _LIST},
}

DEFAULT_MAX_FRAME = 64 * 1024 * 1024

_packer = msgpack.Packer(use_bin_type=True)


def envelope(kind: str, **fields: Any) -> dict[str, Any]:
    """Build an envelope of `kind`; the version is added by `encode`."""
    fields["k"] = kind
    return fields


def encode(messages: list[dict[str, Any]]) -> bytes:
    """Pack one or more envelopes into one frame (a batch when more than one)."""
    if len(messages) == 1:
        msg = messages[0]
        msg["v"] = VERSION
        return bytes(_packer.pack(msg))
    return bytes(_packer.pack({"v": VERSION, "k": BATCH, "m": messages}))


def encode_one(kind: str, **fields: Any) -> bytes:
    fields["k"] = kind
    fields["v"] = VERSION
    return bytes(_packer.pack(fields))


_FIELDS = {kind: tuple(fields.items()) for kind, fields in SCHEMA.items()}


# -- WebSocket actions ----------------------------------------------------------------
# What a worker asks a gateway to do, carried in WS_ACTIONS' "actions" list. An action
# is a list, [name, *fields], built only by the functions below and checked by the
# gateway with `check_action` before it runs it (gateway/ws_hub.py, from a table).
# `conn` is the connection's number at that gateway.
ACCEPT = "accept"  # [accept, conn, subprotocol|None, headers [[name, value], ...], shard|None]
REJECT = "reject"  # [reject, conn, status, body|None]: refuse the handshake with an HTTP status
SEND = "send"  # [send, conn, data]: a text (str) or binary (bytes) message
CLOSE = "close"  # [close, conn, code, reason]
JOIN = "join"  # [join, conn, group]
LEAVE = "leave"  # [leave, conn, group]
SUBSCRIBE = "subscribe"  # [subscribe, conn, group, epoch|None, offset|None]: join, recover
ACK = "ack"  # [ack, conn, count]: the worker handled this many of the connection's messages
BROADCAST = "broadcast"  # [broadcast, group, data, exclude conn|None]: to every member here

_NONE = type(None)
_DATA = (str, bytes)
ACTIONS: dict[str, tuple[tuple[type, ...], ...]] = {
    ACCEPT: ((int,), (str, _NONE), (list,), (str, _NONE)),
    REJECT: ((int,), (int,), (str, bytes, _NONE)),
    SEND: ((int,), _DATA),
    CLOSE: ((int,), (int,), (str,)),
    JOIN: ((int,), (str,)),
    LEAVE: ((int,), (str,)),
    SUBSCRIBE: ((int,), (str,), (str, _NONE), (int, _NONE)),
    ACK: ((int,), (int,)),
    BROADCAST: ((str,), _DATA, (int, _NONE)),
}


def check_action(action: object) -> str | None:
    """Why `action` is not a well-formed action, or None when it is."""
    if type(action) is not list or not action:
        return "not a list"
    shape = ACTIONS.get(action[0]) if type(action[0]) is str else None
    if shape is None:
        return f"unknown action {action[0]!r}"
    if len(action) != len(shape) + 1:
        return f"{action[0]}: {len(action) - 1} fields, not {len(shape)}"
    for value, types in zip(action[1:], shape, strict=True):
        if type(value) not in types:
            return f"{action[0]}: {type(value).__name__} where {types} belong"
    return None


def accept(conn: int, subprotocol: str | None, headers: list[list[str]],
           shard: str | None = None) -> list[Any]:
    return [ACCEPT, conn, subprotocol, headers, shard]


def reject(conn: int, status: int, body: str | bytes | None = None) -> list[Any]:
    return [REJECT, conn, status, body]


def send(conn: int, data: str | bytes) -> list[Any]:
    return [SEND, conn, data]


def close(conn: int, code: int, reason: str = "") -> list[Any]:
    return [CLOSE, conn, code, reason]


def join(conn: int, group: str) -> list[Any]:
    return [JOIN, conn, group]


def leave(conn: int, group: str) -> list[Any]:
    return [LEAVE, conn, group]


def subscribe(conn: int, group: str, epoch: str | None = None,
              offset: int | None = None) -> list[Any]:
    return [SUBSCRIBE, conn, group, epoch, offset]


def ack(conn: int, count: int = 1) -> list[Any]:
    return [ACK, conn, count]


def broadcast(group: str, data: str | bytes, exclude: int | None = None) -> list[Any]:
    return [BROADCAST, group, data, exclude]


def _check(msg: object) -> dict[str, Any]:
    if type(msg) is not dict:
        raise WireError("envelope is not a map")
    kind = msg.get("k")
    fields = _FIELDS.get(kind) if type(kind) is str else None
    if fields is None:
        raise WireError(f"unknown kind {kind!r}")
    for name, typ in fields:
        if type(msg.get(name)) is not typ:
            raise WireError(f"{kind}: field {name!r} missing or of the wrong type")
    return msg


def decode_frame(data: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> list[dict[str, Any]]:
    """Decode one frame into its envelopes, or raise `WireError`."""
    if len(data) > max_frame:
        raise WireError(f"frame of {len(data)} bytes exceeds {max_frame}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise WireError(f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise WireError("frame is not a map")
    if obj.get("v") != VERSION:
        raise WireError(f"unsupported version {obj.get('v')!r}")
    if obj.get("k") == BATCH:
        items = obj.get("m")
        if not isinstance(items, list):
            raise WireError("batch without a list of messages")
        return [_check(item) for item in items]
    return [_check(obj)]
