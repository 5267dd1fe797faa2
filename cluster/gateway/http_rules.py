"""What RFC 9112 and RFC 9110 require of a server about framing, version and Host,
beyond what llhttp already enforces. Sans-I/O: the parsed parts of a request in, the
status to refuse it with (or nothing) out.

llhttp already refuses, with 400: Content-Length with Transfer-Encoding; differing,
listed or signed Content-Lengths; chunked that is not the final transfer coding; bad
chunk sizes; obs-fold; whitespace before a colon or before the first header line;
bare CR or LF; NUL or spaces in the target; a target that is not one of the four
forms; minor versions it does not know. What is left to us, each tested byte by byte
in tests/unit/test_http_rules.py:

- HTTP/1.1 without Host, any request with more than one Host, or an invalid Host
  value: 400 (RFC 9112 §3.2).
- A major version other than 1 (and HTTP/0.9): 505 (RFC 9110 §15.6.6).
- The asterisk form with any method but OPTIONS: 400 (RFC 9112 §3.2.4); an absolute
  form of another scheme than http or https: 400.
- CONNECT, the authority form: 501. This is an origin server, not a proxy
  (RFC 9110 §9.3.6). A method llhttp does not know is its 400: it cannot tell one
  from garbage (RFC 9110 §9.1 would answer a recognisably foreign method 501).
- Transfer codings: chunked not final (or twice) is 400 (RFC 9112 §6.3, a MUST); any
  other coding before a final chunked is 501 (RFC 9112 §6.1: a server SHOULD refuse
  what it does not understand; llhttp would pass a "gzip, chunked" body on still
  compressed).
- Transfer-Encoding in an HTTP/1.0 request: the framing is faulty, so 400 and close
  (RFC 9112 §6.1).
- The absolute form is answered, as RFC 9112 §3.2.2 requires: its authority replaces
  Host (which must still be there, and valid) and the target becomes origin form.
"""

from __future__ import annotations

import re

# uri-host [ ":" port ] (RFC 3986 §3.2.2): an IP literal, or a reg-name/IPv4 of
# unreserved, pct-encoded and sub-delims characters. Empty is allowed (RFC 9112 §3.2).
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(:[0-9]*)?\Z")
_ABSOLUTE = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://([^/?#]*)([^#]*)")


def refusal(method: str, target: str, version: str, hosts: list[str],
            transfer_codings: list[str]) -> tuple[int, str] | None:
    """The status and reason to refuse a request with, or None when it may go on."""
    if version not in ("1.1", "1.0"):
        return 505, f"HTTP version {version} is not supported"
    if len(hosts) > 1:
        return 400, "more than one Host header"
    if not hosts:
        if version == "1.1":
            return 400, "an HTTP/1.1 request without Host"
    elif not valid_host(hosts[0]):
        return 400, "an invalid Host value"
    if method == "CONNECT":
        return 501, "CONNECT: this is not a proxy"
    if target == "*":
        if method != "OPTIONS":
            return 400, f"the asterisk form with {method}"
    elif target[:1] != "/" and _ABSOLUTE.fullmatch(target) is None:
        return 400, "an absolute-form target of a scheme this server does not serve"
    if transfer_codings:
        if version == "1.0":
            return 400, "Transfer-Encoding in an HTTP/1.0 request"
        if transfer_codings[-1] != "chunked" or transfer_codings.count("chunked") > 1:
            # RFC 9112 §6.3: the body's length cannot be known: MUST be 400, and close.
            return 400, "chunked is not the final transfer coding, or is there twice"
        if len(transfer_codings) > 1:
            return 501, f"transfer coding {','.join(transfer_codings)} is not supported"
    return None


VALID_HOSTS: set[str] = set()  # Host values found valid: a server sees the same few


def valid_host(value: str) -> bool:
    if value in VALID_HOSTS:
        return True
    if not _HOST.match(value):
        return False
    if len(VALID_HOSTS) >= 1024:
        VALID_HOSTS.clear()
    VALID_HOSTS.add(value)
    return True


def transfer_codings(value: str) -> list[str]:
    """The codings a Transfer-Encoding field value lists, lower case, parameters off."""
    return [item.partition(";")[0].strip().lower() for item in value.split(",")
            if item.strip()]


def origin_form(target: str) -> tuple[str, str] | None:
    """For an absolute-form target, (origin-form target, authority); else None."""
    if target.startswith("/") or target == "*":
        return None
    match = _ABSOLUTE.fullmatch(target)
    if match is None:
        return None
    authority, rest = match.groups()
    if "@" in authority:
        authority = authority.rpartition("@")[2]  # userinfo is not part of Host
    if not rest.startswith("/"):
        rest = "/" + rest if rest else "/"
    return rest, authority
