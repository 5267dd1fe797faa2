"""Between the wire and the handler: request dicts in, response envelopes out.

`build_request` turns a REQUEST envelope into the seed-style dict a handler gets.
`normalize` turns whatever a handler returned into (status, headers, body), where
body is bytes or an iterator of chunks for a streamed response; anything it cannot
turn into a valid response raises `BadResponse`, which the worker answers with 500.
`response` and `StreamEnvelopes` make the RESPONSE envelopes (with the makers of
cluster/plumbing/response_parts.py, where the parts are declared): the headers checked
and encoded here, once (`cluster.plumbing.http_fields`), and a whole response gzipped here
when the client accepts it, so neither costs the gateway anything.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncIterator, Iterator
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote

from cluster.errors import BadField, BadResponse, StateError
from cluster.plumbing.http_fields import encode_fields
from cluster.plumbing.response_parts import abort_envelope, head_envelope, part_envelope
from cluster.responses import parse_cookies, set_cookie_headers
from cluster.worker.compression import accepts_gzip, gzip_response

log = logging.getLogger("cluster.worker")


class ReplyLink(Protocol):
    """What answering a request needs of the gateway link it came on: which gateway it
    is, and the way back. A `GatewayLink` is one; so is the microbenchmark's."""

    gateway_id: str

    def post(self, msg: dict[str, Any]) -> None: ...


def target_fields(env: dict[str, Any], scheme: str) -> dict[str, Any]:
    """What an HTTP request and a WebSocket connect share: path, query, headers, addr.
    Repeated headers are joined with ', ' (cookies with '; '). `scheme` is the plain
    one ("http" or "ws"), kept unless the gateway says the client used TLS."""
    target: str = env["target"]
    raw_path, _, query_string = target.partition("?")
    headers: dict[str, str] = {}
    for pair in env["headers"]:
        if type(pair) is not list or len(pair) != 2:
            continue  # only a broken frame has these; the gateway sends pairs
        name, value = pair
        if type(name) is not str or type(value) is not str:
            continue
        if name in headers:
            headers[name] += ("; " if name == "cookie" else ", ") + value
        else:
            headers[name] = value
    addr = env["addr"]
    secure = env.get("scheme")
    return {
        "cookies": _cookies(headers["cookie"]) if "cookie" in headers else {},
        "scheme": secure if secure in ("https", "wss") else scheme,
        "target": target,
        "path": unquote(raw_path) if "%" in raw_path else raw_path,
        "query_string": query_string,
        "query": _query(query_string) if query_string else {},
        "headers": headers,
        "addr": (addr[0], addr[1]) if len(addr) == 2 else ("", 0),
    }


def header_value(pairs: list[list[str]], name: str) -> str:
    """Header `name` (lower case) in an envelope's pairs, repeated lines joined with
    ', ' (as the handler dict joins them), or ''."""
    return ", ".join(pair[1] for pair in pairs
                     if len(pair) == 2 and pair[0] == name and type(pair[1]) is str)


def _query(query_string: str) -> dict[str, str]:
    query: dict[str, str] = {}
    for key, value in parse_qsl(query_string, keep_blank_values=True):
        query.setdefault(key, value)  # the first value wins, as in most frameworks
    return query


@lru_cache(maxsize=1024)
def _parsed_cookies(header: str) -> tuple[tuple[str, str], ...]:
    # http.cookies is slow (about 10 µs a cookie), and a browser sends the same
    # Cookie header with every request: parse each distinct header once.
    return tuple(parse_cookies(header).items())


def _cookies(header: str) -> dict[str, str]:
    return dict(_parsed_cookies(header)) if len(header) <= 4096 else parse_cookies(header)


def build_request(env: dict[str, Any], gateway_id: str) -> dict[str, Any]:
    req = target_fields(env, "http")
    req["type"] = "http"
    req["id"] = f"{gateway_id}/{env['id']}"
    req["conn"] = f"{gateway_id}/{env['conn']}"
    req["method"] = env["method"]
    req["version"] = "HTTP/" + env["version"]
    req["raw_headers"] = env["headers"]
    req["body"] = env["body"]
    return req


_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"
_BINARY = "application/octet-stream"

Body = bytes | Iterator[Any] | AsyncIterator[Any]


def _headers(raw: Any) -> list[list[str]]:
    if raw is None:
        return []
    items = raw.items() if isinstance(raw, dict) else raw
    try:
        return [[str(name), str(value)] for name, value in items]
    except (TypeError, ValueError):
        raise BadResponse("headers must be a dict or a list of (name, value) pairs") from None


def _has(headers: list[list[str]], name: str) -> bool:
    return any(header[0].lower() == name for header in headers)


def encode_body(body: Any, headers: list[list[str]]) -> Body:
    """bytes as they are, str as UTF-8 text, iterators streamed, the rest as JSON."""
    if body is None:
        return b""
    if isinstance(body, str):
        if not _has(headers, "content-type"):
            headers.append(["content-type", _TEXT])
        return body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        if not _has(headers, "content-type"):
            headers.append(["content-type", _BINARY])
        return bytes(body)
    if inspect.isasyncgen(body) or hasattr(body, "__anext__"):
        return body  # type: ignore[no-any-return]
    if inspect.isgenerator(body) or (hasattr(body, "__next__") and hasattr(body, "__iter__")):
        return body  # type: ignore[no-any-return]
    try:
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise BadResponse(f"body of type {type(body).__name__} is not JSON-able: {exc}") from None
    if not _has(headers, "content-type"):
        headers.append(["content-type", _JSON])
    return data


RESPONSE_KEYS = frozenset({"status", "headers", "body", "cookies"})


def normalize(msg: Any) -> tuple[int, list[list[str]], Body]:
    if msg is None:
        return 204, [], b""
    if isinstance(msg, dict) and msg.keys() <= RESPONSE_KEYS and msg:
        status = msg.get("status", 200)
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
            raise BadResponse(f"status {status!r} is not an HTTP status code")
        headers = _headers(msg.get("headers"))
        if msg.get("cookies") is not None:
            try:
                headers += set_cookie_headers(msg["cookies"])
            except ValueError as exc:
                raise BadResponse(str(exc)) from None
        return status, headers, encode_body(msg.get("body"), headers)
    headers = []
    return 200, headers, encode_body(msg, headers)


def chunk_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise BadResponse(f"a streamed chunk of type {type(chunk).__name__}; bytes or str expected")


def response(req_id: int, status: int, headers: list[list[str]], body: bytes, *,
             request_headers: list[list[str]] | None = None,
             gzip_min_size: int = 0) -> dict[str, Any]:
    """A whole response's envelope, gzipped when it is big enough and the request's
    headers (its envelope's pairs) accept gzip: they are read only then. Raises
    `BadField` for a header that cannot be sent."""
    if gzip_min_size and len(body) >= gzip_min_size and request_headers and \
            accepts_gzip(header_value(request_headers, "accept-encoding")):
        packed = gzip_response(status, headers, body, gzip_min_size)
        if packed is not None:
            headers, body = packed
    return head_envelope(req_id, status, encode_fields(headers)[0], body, False)


class StreamEnvelopes:
    """The envelopes of one streamed response: the first chunk carries the status and
    headers, later ones are parts; then the end, or a failure (a 500 while nothing
    went out, an abort after)."""

    def __init__(self, req_id: int, status: int, headers: list[list[str]]) -> None:
        self.req_id = req_id
        self.status = status
        # Raises BadField before anything is sent. A declared Content-Length frames
        # the stream (the gateway cuts the connection if the body falls short).
        self.head, self.length = encode_fields(headers)
        self.started = False

    def chunk(self, chunk: Any) -> dict[str, Any]:
        data = chunk_bytes(chunk)
        if self.started:
            return part_envelope(self.req_id, data, True)
        self.started = True
        return head_envelope(self.req_id, self.status, self.head, data, True, self.length)

    def end(self) -> dict[str, Any]:
        if self.started:
            return part_envelope(self.req_id, b"", False)
        return head_envelope(self.req_id, self.status, self.head, b"", False)

    def failed(self, req_label: str) -> dict[str, Any]:
        # After its head was sent the gateway cuts the response; before, a 500.
        return abort_envelope(self.req_id) if self.started else \
            server_error(self.req_id, req_label)


def server_error(req_id: int, req_label: str) -> dict[str, Any]:
    """500 naming the request id, so a user can find the traceback in the worker log."""
    return head_envelope(req_id, 500, _TEXT_HEAD,
                         f"Internal Server Error (request {req_label})\n".encode(), False)


_TEXT_HEAD = encode_fields([("content-type", _TEXT)])[0]


def log_failure(req: dict[str, Any], exc: Exception) -> None:
    """The one log line of a handler that failed, naming its request."""
    extra = {"request_id": req["id"]}
    if isinstance(exc, (BadResponse, BadField)):
        log.error("request %s: handler returned a bad response: %s", req["id"], exc,
                  extra=extra)
    elif isinstance(exc, StateError):
        log.error("request %s: state operation refused: %s", req["id"], exc, extra=extra)
    else:
        log.error("request %s: handler raised", req["id"], exc_info=exc, extra=extra)
