"""gzip for whole responses above a size, when the client accepts it (seed PyAsync's
"compression threshold"). Sans-I/O: headers and bytes in, headers and bytes out;
the compression itself is zlib's. It runs in the worker that made the response
(on the handler's thread for a sync handler): on the gateway's loop, a 1 MiB body
at level 6 stalled every client of that gateway while it compressed.

Streamed responses are left alone (each part would need its own flush, and a
stream's size is not known when its head goes out), as are responses that already
carry a Content-Encoding, ranges (206), and types that are compressed already
(images, archives, video).
"""

from __future__ import annotations

import zlib

GZIP_LEVEL = 6
_COMPRESSIBLE_PREFIXES = ("text/", "application/json", "application/javascript",
                          "application/xml", "application/xhtml", "image/svg+xml",
                          "application/x-ndjson", "application/ld+json")


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding value allows gzip (a q=0 forbids it)."""
    for item in accept_encoding.split(","):
        token, _, params = item.strip().partition(";")
        if token.strip().lower() not in ("gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        return q > 0
    return False


def compressible(content_type: str) -> bool:
    return content_type.strip().lower().startswith(_COMPRESSIBLE_PREFIXES)


def gzip_response(status: int, headers: list[list[str]], body: bytes, min_size: int
                  ) -> tuple[list[list[str]], bytes] | None:
    """The compressed headers and body, or None when this response stays as it is."""
    if len(body) < min_size or not 200 <= status < 300 or status in (204, 206):
        return None
    content_type = ""
    for name, value in headers:
        lower = name.lower()
        if lower == "content-encoding":
            return None
        if lower == "content-type":
            content_type = value
    if not compressible(content_type):
        return None
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: the gzip wrapper
    compressed = packer.compress(body) + packer.flush()
    if len(compressed) >= len(body):
        return None
    kept = [[n, v] for n, v in headers if n.lower() not in ("content-length", "etag")]
    return [*kept, ["content-encoding", "gzip"], ["vary", "accept-encoding"]], compressed
