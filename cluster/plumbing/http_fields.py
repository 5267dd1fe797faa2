"""Response header fields: checked once, where a response is made, then sent as bytes.

Theory of operation
-------------------
A handler's headers are validated in the worker that ran it (`encode_fields`) and
cross the wire as one bytes value, the block of their ``name: value\\r\\n`` lines.
The gateway writes that block between the status line, Date and Server it makes
and the framing headers it owns (Content-Length, Transfer-Encoding, Connection);
it only checks the block's shape (`well_formed`), which is a few scans in C. Before,
every header was checked twice, in the worker and again in the gateway, and the
gateway is the process users run fewest of.

A field name must be an RFC 9110 token; a value must not hold CR, LF or NUL
(anything else that could split or corrupt a response). Names are remembered once
checked: a server answers with the same few names all day.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from cluster.errors import BadField

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Headers the gateway owns: a handler's values are dropped, not repeated. A declared
# Content-Length still frames a streamed response (see `encode_fields`).
FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "date"})
_PLAIN, _LENGTH, _DROPPED = 0, 1, 2
_names: dict[str, int] = {}  # checked names -> what they are
_MAX_NAMES = 4096


def _learn(name: str) -> int:
    if not _TOKEN.match(name):
        raise BadField(f"invalid header name {name!r}")
    lower = name.lower()
    kind = _LENGTH if lower == "content-length" else \
        _DROPPED if lower in FRAMING else _PLAIN
    if len(_names) >= _MAX_NAMES:
        _names.clear()  # unbounded names (a handler echoing input) must not grow this
    _names[name] = kind
    return kind


def encode_fields(headers: Iterable[Sequence[object]]) -> tuple[bytes, int | None]:
    """The header block of (name, value) pairs, framing headers left out, and the
    Content-Length they declared (a stream may keep it), or None. Raises `BadField`.
    (The pairs are typed `object` because a handler can return anything there, and
    the compiled build checks declared types: this function's own checks answer.)"""
    lines: list[str] = []
    declared: int | None = None
    for pair in headers:
        if len(pair) != 2:
            raise BadField("a header is not a (name, value) pair")
        name, value = pair
        if type(name) is not str:
            raise BadField(f"invalid header name {name!r}")
        kind = _names.get(name)
        if kind is None:
            kind = _learn(name)
        if type(value) is not str or "\r" in value or "\n" in value or "\0" in value:
            raise BadField(f"invalid value for header {name!r}")
        if kind == _PLAIN:
            lines += (name, ": ", value, "\r\n")
        elif kind == _LENGTH:
            declared = int(value) if value.isdigit() else None
    return "".join(lines).encode("latin-1", "replace"), declared


def well_formed(block: object) -> bool:
    """Whether a header block from a peer is one of `encode_fields`' shape: whole
    CRLF-ended lines, no empty line, no bare CR or LF, no NUL, no framing header.
    (A worker made it; this keeps a broken one from splitting a response.)"""
    if type(block) is not bytes:
        return False
    if not block:
        return True
    if not block.endswith(b"\r\n") or block.startswith(b"\r\n") or b"\r\n\r\n" in block \
            or b"\0" in block or block.count(b"\r") != block.count(b"\r\n") \
            or block.count(b"\n") != block.count(b"\r\n"):
        return False
    lines = b"\n" + block.lower()
    return not any(needle in lines for needle in _FRAMING_LINES)


_FRAMING_LINES = tuple(b"\n" + name.encode() + b":" for name in sorted(FRAMING))
