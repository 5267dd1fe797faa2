from __future__ import annotations

import pytest

from cluster import redirect
from cluster.errors import BadResponse
from cluster.responses import parse_cookies, set_cookie_headers
from cluster.worker.messages import normalize


def test_redirect() -> None:
    assert redirect("/login") == {"status": 302, "headers": {"location": "/login"},
                                  "body": ""}
    assert redirect("https://x.example/", 308)["status"] == 308
    with pytest.raises(ValueError):
        redirect("/x", 200)
    with pytest.raises(ValueError):
        redirect("/x\r\nSet-Cookie: evil=1")


def test_parse_cookies_keeps_good_pairs_and_skips_bad_ones() -> None:
    assert parse_cookies('a=1; b="two words"; bad\x01=; c=3') == \
        {"a": "1", "b": "two words", "c": "3"}
    assert parse_cookies("") == {}
    assert parse_cookies("a=1; a=2") == {"a": "1"}  # the first wins


def test_set_cookie_headers() -> None:
    headers = set_cookie_headers({"s": {"value": "abc", "httponly": True, "max_age": 60,
                                        "path": "/", "samesite": "Lax", "secure": True},
                                  "plain": "v"})
    assert headers[0][0] == "set-cookie"
    value = headers[0][1]
    for part in ("s=abc", "HttpOnly", "Max-Age=60", "Path=/", "SameSite=Lax", "Secure"):
        assert part in value
    assert headers[1] == ["set-cookie", "plain=v"]
    with pytest.raises(ValueError):
        set_cookie_headers({"s": {"value": "x", "colour": "red"}})
    with pytest.raises(ValueError):
        set_cookie_headers({"bad name": "x"})


def test_a_response_dict_sets_cookies_and_refuses_bad_ones() -> None:
    status, headers, body = normalize({"body": "hi", "cookies": {"a": "1"}})
    assert status == 200 and ["set-cookie", "a=1"] in headers and body == b"hi"
    with pytest.raises(BadResponse):
        normalize({"body": "hi", "cookies": {"a": {"value": "1", "nope": 1}}})
