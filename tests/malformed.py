"""Requests RFC 9112 says a server must refuse with 400: one list, used by the unit
tests of the HTTP core and by the end-to-end tests through a real gateway."""

MALFORMED = {
    "cl-and-te": b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n",
    "differing-cl": b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "obs-fold": b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
    "nul": b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    "bare-cr": b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    "negative-cl": b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    "garbage": b"NOT HTTP AT ALL\r\n\r\n",
    "bad-version": b"GET / HTTP/9.9\r\n\r\n",
}
