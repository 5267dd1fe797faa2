"""A response as it travels from a worker to the gateway: typed parts, declared once.

Theory of operation
-------------------
A response is one `ResponseHead` (status, header block, the first bytes of the body),
then, if the head says more is coming, any number of `BodyPart`s and one `End`; or it
is cut by an `Abort` at any point after the head. On the wire each part is a RESPONSE
envelope (wire.py); the functions here are the only ones that make those envelopes
(the worker's side) and the only one that reads them (`read_part`, the gateway's
side), so the two cannot drift apart. A part is a head by what it carries, a status,
not by its place: a gateway that gets a body part before any head knows the worker
broke the protocol and answers 502.

The gateway makes parts of its own too (an error page, a static file, a bundled
script, a local answer) as these same types, so a connection turns only typed parts
into bytes: `HttpConnection` and `H2Connection` never read a dict.

A head's status and header block are as the worker sent them (`object`): the gateway
checks them once per head (client_context.check_head) before anything is written.
"""

from __future__ import annotations

from typing import Any

from cluster.plumbing import wire


class ResponseHead:
    """The start of a response. `more`: parts follow (a streamed body), else the
    response is whole. `length`: the Content-Length a stream declared. `events`: the
    response becomes a stream of Server-Sent Events (worker/event_streams.py)."""

    __slots__ = ("body", "events", "fields", "length", "more", "status")

    def __init__(self, status: object, fields: object, body: bytes, more: bool,
                 length: int | None = None, events: object = None) -> None:
        self.status = status
        self.fields = fields
        self.body = body
        self.more = more
        self.length = length
        self.events = events


class BodyPart:
    """A part of a streamed body; more follow."""

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body


class End:
    """The last part of a streamed body (it may carry bytes too)."""

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body


class Abort:
    """The response cannot complete: the gateway cuts it (the connection, for
    HTTP/1.1; the stream, for HTTP/2)."""

    __slots__ = ()


ResponsePart = ResponseHead | BodyPart | End | Abort

ABORT = Abort()  # it carries nothing: one will do


def is_final(part: ResponsePart) -> bool:
    """Whether nothing follows this part."""
    if isinstance(part, ResponseHead):
        return not part.more
    return not isinstance(part, BodyPart)


# -- the wire (the worker's side makes, the gateway's side reads) -------------------

def head_envelope(rid: int, status: int, fields: bytes, body: bytes, more: bool,
                  length: int | None = None) -> dict[str, Any]:
    env: dict[str, Any] = {"k": wire.RESPONSE, "id": rid, "status": status, "head": fields,
                           "body": body, "more": more}
    if length is not None:
        env["length"] = length
    return env


def events_envelope(rid: int, fields: bytes, events: list[Any]) -> dict[str, Any]:
    """A head that makes the response a stream of Server-Sent Events."""
    return {"k": wire.RESPONSE, "id": rid, "status": 200, "head": fields, "body": b"",
            "more": False, "events": events}


def part_envelope(rid: int, body: bytes, more: bool) -> dict[str, Any]:
    """A body part (more=True) or the end of a streamed body."""
    return {"k": wire.RESPONSE, "id": rid, "body": body, "more": more}


def abort_envelope(rid: int) -> dict[str, Any]:
    return {"k": wire.RESPONSE, "id": rid, "more": False, "abort": True}


def read_part(env: dict[str, Any]) -> ResponsePart:
    """A RESPONSE envelope (its `id` and `more` checked by wire.decode_frame) as the
    part it is. A body that is not bytes counts as none."""
    if env.get("abort"):
        return ABORT
    body = env.get("body", b"")
    if type(body) is not bytes:
        body = b""
    if "status" in env:
        length = env.get("length")
        return ResponseHead(env["status"], env.get("head", b""), body, env["more"],
                            length if type(length) is int else None, env.get("events"))
    return BodyPart(body) if env["more"] else End(body)
