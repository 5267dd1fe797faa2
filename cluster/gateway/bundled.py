"""What every gateway serves itself, whatever the application: the JavaScript client
(clients/js) at `/_cluster/client.js`, so a page needs no bundler and no copy of it.

Sans-I/O: `answer()` maps a request to a status, headers and body. The file is read
once, at the first request for it; its ETag lets browsers revalidate for a 304.
"""

from __future__ import annotations

import hashlib
import logging
from functools import cache
from pathlib import Path

log = logging.getLogger("cluster.gateway")

PREFIX = "/_cluster/"  # requests under it are checked here; only the files below answer
CLIENT_PATH = "/_cluster/client.js"
# In the package (a symlink into clients/js in a checkout; a copy in a wheel).
CLIENT_FILE = Path(__file__).resolve().parent.parent / "js" / "cluster-client.js"

Answer = tuple[int, list[tuple[str, str]], bytes]


@cache
def _client() -> tuple[bytes, str] | None:
    try:
        body = CLIENT_FILE.read_bytes()
    except OSError as exc:
        log.error("the JavaScript client is missing from the package (%s)", exc)
        return None
    return body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def answer(method: str, target: str, headers: list[tuple[str, str]]) -> Answer | None:
    """The gateway's own answer to a request under PREFIX, or None: a worker's."""
    path = target.partition("?")[0]
    if path != CLIENT_PATH:
        return None
    if method not in ("GET", "HEAD"):
        return 405, [("allow", "GET, HEAD")], b""
    client = _client()
    if client is None:
        return 404, [], b""
    body, etag = client
    fields = [("content-type", "text/javascript; charset=utf-8"), ("etag", etag),
              ("cache-control", "no-cache")]  # revalidated each load: a 304 is cheap
    if any(name == "if-none-match" and etag in value for name, value in headers):
        return 304, fields, b""
    return 200, fields, body  # a HEAD's body is left out where the head is written
