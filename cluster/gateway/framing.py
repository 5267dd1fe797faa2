"""How a response's body goes out: decided once, here, for HTTP/1.1 and HTTP/2 alike,
from the request (version, method) and the response's first part. Sans-I/O and
without side effects: the exchange keeps what this returns (`Exchange.frame`), and
the connections turn it into bytes (http_core.py's `frame_start`, h2_core.py's
content-length).

- No body at all for HEAD, 1xx, 204 and 304 (RFC 9110 §6.4.1). A HEAD still gets the
  length its GET would have, when that is known.
- Content-Length when the size is known: a whole response, or a stream that declared
  its length.
- Otherwise, a stream of unknown length: chunked on HTTP/1.1; on HTTP/1.0 the body
  ends when the connection closes; HTTP/2 frames it by itself (version "2").
"""

from __future__ import annotations


class Framing:
    __slots__ = ("chunked", "content_length", "no_body", "until_close")

    def __init__(self, content_length: int | None, chunked: bool, until_close: bool,
                 no_body: bool) -> None:
        self.content_length = content_length
        self.chunked = chunked
        self.until_close = until_close  # HTTP/1.0: the connection's close ends the body
        self.no_body = no_body


UNDECIDED = Framing(None, False, False, False)  # no response head yet
NO_BODY = Framing(None, False, False, True)  # the gateway answered in the worker's stead


def body_framing(version: str, method: str, status: int, first: int, more: bool,
                 declared: object) -> Framing:
    """`first`: the first part's size; `more`: whether parts follow; `declared`: the
    length a stream said it has (None, or anything not a size, if it did not)."""
    bodiless_status = status in (204, 304) or status < 200
    content_length: int | None = None
    chunked = until_close = False
    if bodiless_status:
        pass
    elif not more:
        content_length = first
    elif type(declared) is int and declared >= 0:
        content_length = declared
    elif version == "1.1":
        # A HEAD of a stream of unknown length: no framing header at all.
        chunked = method != "HEAD"
    elif version == "1.0":
        until_close = True
    return Framing(content_length, chunked, until_close, bodiless_status or method == "HEAD")
