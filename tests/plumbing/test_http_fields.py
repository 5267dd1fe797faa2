"""Response header fields: checked once where a response is made, then sent as bytes."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.errors import BadField
from cluster.plumbing.http_fields import encode_fields, well_formed


def test_fields_become_lines_in_order() -> None:
    block, declared = encode_fields([["X-A", "1"], ("x-a", "2"), ["Content-Type", "text/x"]])
    assert block == b"X-A: 1\r\nx-a: 2\r\nContent-Type: text/x\r\n" and declared is None


def test_no_fields_is_empty() -> None:
    assert encode_fields([]) == (b"", None)


def test_framing_headers_are_dropped_and_a_length_is_reported() -> None:
    block, declared = encode_fields([("Content-Length", "999"), ("Transfer-Encoding", "gzip"),
                                     ("Date", "x"), ("Connection", "close"), ("a", "b")])
    assert block == b"a: b\r\n" and declared == 999


def test_a_length_that_is_not_digits_is_not_a_length() -> None:
    assert encode_fields([("content-length", "-1")]) == (b"", None)
    assert encode_fields([("content-length", "1e3")]) == (b"", None)


def test_values_outside_latin1_are_replaced_not_an_error() -> None:
    assert encode_fields([("x", "é€")])[0] == b"x: \xe9?\r\n"


@pytest.mark.parametrize("pair", [("X", "a\r\nb"), ("X", "a\nb"), ("X", "a\rb"), ("X", "a\0b"),
                                  ("X Y", "v"), ("X:Y", "v"), ("", "v"), ("X\r\n", "v"),
                                  ("é", "v"), (b"X", "v"), ("X", 1), ("X", None),
                                  ("a", "b", "c"), ("a",)])
def test_what_could_split_or_corrupt_a_response_is_refused(pair: Any) -> None:
    with pytest.raises(BadField):
        encode_fields([pair])


def test_a_refused_name_is_not_remembered_as_good() -> None:
    for _ in range(2):
        with pytest.raises(BadField):
            encode_fields([("bad name", "v")])


@pytest.mark.parametrize("block", [b"", b"a: b\r\n", b"a: b\r\nc: d\r\n",
                                   b"x-note: content-length: 5\r\n"])
def test_well_formed_blocks(block: bytes) -> None:
    assert well_formed(block)


@pytest.mark.parametrize("block", [b"a: b", b"a: b\n", b"a: b\r\n\r\nHTTP/1.1 200 OK\r\n",
                                   b"\r\na: b\r\n", b"a: b\rc: d\r\n", b"a: b\nc: d\r\n",
                                   b"a: \0\r\n", b"Content-Length: 5\r\n",
                                   b"a: b\r\ntransfer-encoding: chunked\r\n", "a: b\r\n",
                                   None, ["a: b\r\n"]])
def test_malformed_blocks(block: Any) -> None:
    assert not well_formed(block)
