"""A handler's answer that makes its HTTP response a stream of Server-Sent Events
(docs/clients.md): the envelope the gateway turns into one.

    return {"events": {"subscribe": "room:lobby", "join": ["user:7"]}}
    return cluster.event_stream(subscribe="room:lobby", join="user:7", retry=2000)

The response stays open at the gateway, a member of the groups: `join` for plain
broadcasts, `subscribe` for one group's published messages, each an event whose id
is its "epoch:offset". A browser that reconnects sends the last id it saw as
`Last-Event-ID`, and the stream resumes after it, exactly as a WebSocket subscription
with `since` (or says `recovered: false`). `cluster.push(req["conn"], data)` reaches
this one stream. No worker holds it: the handler has returned.
"""

from __future__ import annotations

from typing import Any

from cluster.errors import BadResponse
from cluster.plumbing.http_fields import encode_fields
from cluster.plumbing.response_parts import events_envelope
from cluster.worker.messages import header_value

BASE_HEADERS = [["content-type", "text/event-stream; charset=utf-8"],
                ["cache-control", "no-cache"],
                # nginx would otherwise buffer the stream until its buffer fills
                ["x-accel-buffering", "no"]]


def last_event_id(pairs: list[list[str]]) -> list[Any] | None:
    """The request's Last-Event-ID as [epoch, offset], or None if absent or not ours."""
    epoch, _, offset = header_value(pairs, "last-event-id").strip().rpartition(":")
    if not epoch or not offset.isdigit() or len(epoch) > 200:
        return None
    return [epoch, int(offset)]


def _groups(value: Any) -> list[str]:
    groups = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise BadResponse("events: join is a group name or a list of them")
    return groups


def envelope(rid: int, req: dict[str, Any], msg: dict[str, Any]) -> dict[str, Any]:
    """The final RESPONSE envelope with its `events`: [join groups, subscribe as
    [group, epoch, offset] or None, retry ms or None]. Raises BadResponse."""
    spec = msg["events"]
    if spec is True:
        spec = {}
    if not isinstance(spec, dict):
        raise BadResponse("events must be a dict (join, subscribe, retry)")
    status = msg.get("status", 200)
    if status != 200:
        raise BadResponse(f"an event stream's status is 200, not {status!r}: refuse it with "
                          "an ordinary response")
    join = _groups(spec.get("join"))
    subscribe = spec.get("subscribe")
    if isinstance(subscribe, str):
        subscribe = {"group": subscribe}
    numbered: list[Any] | None = None
    if subscribe is not None:
        if not isinstance(subscribe, dict) or not isinstance(subscribe.get("group"), str):
            raise BadResponse("events: subscribe is a group name or {group, since}")
        since = subscribe.get("since")
        if since is None:
            since = last_event_id(req["raw_headers"])
        if since is not None and not (
                isinstance(since, (list, tuple)) and len(since) == 2 and
                isinstance(since[0], str) and type(since[1]) is int):
            raise BadResponse("events: since is [epoch, offset]")
        numbered = [subscribe["group"], *(since or (None, None))]
    retry = spec.get("retry")
    if retry is not None and (type(retry) is not int or retry < 0):
        raise BadResponse("events: retry is a number of milliseconds")
    headers = [list(h) for h in BASE_HEADERS]
    extra = msg.get("headers") or {}
    items = extra.items() if isinstance(extra, dict) else extra
    named = {h[0] for h in headers}
    for name, value in items:
        if str(name).lower() in named:
            headers = [h for h in headers if h[0] != str(name).lower()]
        headers.append([str(name), str(value)])
    return events_envelope(rid, encode_fields(headers)[0], [join, numbered, retry])
