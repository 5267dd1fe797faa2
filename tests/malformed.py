"""Requests RFC 9112 says a server must refuse with 400: one list, used by the unit
tests of the HTTP core and by the end-to-end tests through a real gateway. Each has a
Host, so it is refused for the fault it names (an HTTP/1.1 request without Host is a
400 of its own, in tests/gateway/test_http_rules.py)."""

MALFORMED = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "differing-cl": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n"
                    b"\r\nabcd",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n",
    "nul": b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\nabc\r\n",
    "negative-cl": b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "bad-version": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    # llhttp cannot tell a method it does not know from garbage: 400 either way
    # (RFC 9110 §9.1 would have a recognisably foreign method be 501).
    "garbage": b"NOT HTTP AT ALL\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
}

# Refused with 501 Not Implemented (RFC 9110 §9.1, RFC 9112 §6.1), then closed.
NOT_IMPLEMENTED = {
    "transfer-coding": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n"
                       b"\r\n0\r\n\r\n",
    "connect": b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
}
