"""Helpers a handler returns or reads: redirects, event streams and cookies.

    from cluster import redirect
    return redirect("/login")                      # 302, Location: /login
    return {"body": "hi", "cookies": {"session": {"value": token, "httponly": True,
                                                  "max_age": 3600, "samesite": "Lax"}}}
    req["cookies"]                                 # {"session": "..."} from Cookie

Cookie syntax is the standard library's (`http.cookies`), not ours.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from typing import Any

REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Response-dict attribute names -> http.cookies Morsel keys.
_ATTRIBUTES = {"path": "path", "domain": "domain", "max_age": "max-age",
               "expires": "expires", "secure": "secure", "httponly": "httponly",
               "samesite": "samesite"}


def redirect(location: str, status: int = 302) -> dict[str, Any]:
    """A response sending the client to `location` (301, 302, 303, 307 or 308)."""
    if status not in REDIRECTS:
        raise ValueError(f"{status} is not a redirect status")
    if any(c in location for c in "\r\n"):
        raise ValueError("a Location cannot contain a line break")
    return {"status": status, "headers": {"location": location}, "body": ""}


def event_stream(subscribe: str | None = None, join: str | list[str] | None = None,
                 since: tuple[str, int] | list[Any] | None = None,
                 retry: int | None = None,
                 headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Answer with a stream of Server-Sent Events (docs/clients.md): a member of
    `join`'s groups, and subscribed to `subscribe`'s published messages, resuming after
    `since` or else the request's Last-Event-ID. `retry`: the browser's pause before it
    reconnects, in ms. `cluster.push(req["conn"], data)` reaches the stream."""
    events: dict[str, Any] = {"join": join, "retry": retry}
    if subscribe is not None:
        events["subscribe"] = {"group": subscribe,
                               "since": list(since) if since is not None else None}
    return {"status": 200, "headers": headers or {}, "events": events}


def parse_cookies(header: str) -> dict[str, str]:
    """The Cookie header as a dict; a malformed pair is skipped, never an error."""
    cookies: dict[str, str] = {}
    for piece in header.split(";"):
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(piece.strip())
        except CookieError:
            continue
        for name, morsel in jar.items():
            cookies.setdefault(name, morsel.value)
    return cookies


def set_cookie_headers(cookies: Any) -> list[list[str]]:
    """`Set-Cookie` headers for a response's `cookies` dict: name -> value, or
    name -> {"value": ..., "path", "domain", "max_age", "expires", "secure",
    "httponly", "samesite"}. Raises ValueError for what cannot be a cookie."""
    if not isinstance(cookies, dict):
        raise ValueError("cookies must be a dict of name -> value or attributes")
    headers = []
    for name, spec in cookies.items():
        attrs = spec if isinstance(spec, dict) else {"value": spec}
        jar: SimpleCookie = SimpleCookie()
        try:
            jar[str(name)] = str(attrs.get("value", ""))
        except CookieError as exc:
            raise ValueError(f"cookie {name!r}: {exc}") from None
        morsel = jar[str(name)]
        for key, value in attrs.items():
            if key == "value":
                continue
            if key not in _ATTRIBUTES:
                raise ValueError(f"cookie {name!r}: unknown attribute {key!r}")
            morsel[_ATTRIBUTES[key]] = value
        headers.append(["set-cookie", morsel.OutputString()])
    return headers
