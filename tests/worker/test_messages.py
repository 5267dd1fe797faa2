"""What handlers return, turned into responses; what they get, built from envelopes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cluster.errors import BadResponse
from cluster.worker.messages import build_request, chunk_bytes, normalize


def ctype(headers: list[list[str]]) -> str:
    return dict(headers)["content-type"]


def test_str_is_utf8_text() -> None:
    status, headers, body = normalize("héllo")
    assert (status, body, ctype(headers)) == (200, "héllo".encode(), "text/plain; charset=utf-8")


def test_bytes_are_binary_unless_typed() -> None:
    assert ctype(normalize(b"\x00")[1]) == "application/octet-stream"
    _, headers, _ = normalize({"body": b"x", "headers": {"Content-Type": "image/png"}})
    assert headers == [["Content-Type", "image/png"]]


def test_json_for_other_values() -> None:
    status, headers, body = normalize({"status": 201, "body": {"a": [1, "é"]}})
    assert status == 201 and body == '{"a":[1,"é"]}'.encode() and ctype(headers) == \
        "application/json"
    assert normalize([1, 2])[2] == b"[1,2]"
    assert normalize({"a": 1})[2] == b'{"a":1}'  # a dict that is not a response is data


def test_none_is_204() -> None:
    assert normalize(None) == (204, [], b"")


def test_headers_as_pairs() -> None:
    _, headers, _ = normalize({"headers": [("a", 1), ("a", "2")], "body": ""})
    assert headers[:2] == [["a", "1"], ["a", "2"]]


def test_iterators_stream() -> None:
    def gen() -> Iterator[str]:
        yield "x"
    _, _, body = normalize({"body": gen()})
    assert not isinstance(body, bytes)


@pytest.mark.parametrize("msg", [{"status": "200"}, {"status": 42}, {"status": True},
                                 {"body": object()}, {"headers": 5, "body": ""},
                                 {"headers": [("a",)], "body": ""}])
def test_bad_responses(msg: Any) -> None:
    with pytest.raises(BadResponse):
        normalize(msg)


def test_chunk_types() -> None:
    assert chunk_bytes("é") == "é".encode() and chunk_bytes(bytearray(b"a")) == b"a"
    with pytest.raises(BadResponse):
        chunk_bytes(3)


def test_build_request() -> None:
    env = {"id": 7, "conn": 3, "method": "POST", "target": "/a%20b/c?x=1&x=2&y=&z",
           "version": "1.1", "headers": [["host", "h"], ["x-a", "1"], ["x-a", "2"],
                                         ["cookie", "a=1"], ["cookie", "b=2"]],
           "body": b"data", "addr": ["10.0.0.1", 5555]}
    req = build_request(env, "gw-1")
    assert req["id"] == "gw-1/7" and req["conn"] == "gw-1/3"
    assert req["path"] == "/a b/c" and req["target"] == "/a%20b/c?x=1&x=2&y=&z"
    assert req["query"] == {"x": "1", "y": "", "z": ""}
    assert req["headers"] == {"host": "h", "x-a": "1, 2", "cookie": "a=1; b=2"}
    assert req["addr"] == ("10.0.0.1", 5555) and req["version"] == "HTTP/1.1"
    assert req["body"] == b"data" and req["type"] == "http"




def test_header_value_joins_repeated_lines_as_the_handler_dict_does() -> None:
    from cluster.worker.messages import header_value
    pairs = [["accept-encoding", "br"], ["host", "h"], ["accept-encoding", "gzip"], ["x"]]
    assert header_value(pairs, "accept-encoding") == "br, gzip"
    assert header_value(pairs, "cookie") == ""
