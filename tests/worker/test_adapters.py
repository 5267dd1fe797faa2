"""What an App view may return, as Flask users expect."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.errors import BadResponse
from cluster.worker.adapters import view_answer
from cluster.worker.messages import normalize

VIEW: Any = None  # the state view is not read for these answers


@pytest.mark.parametrize(("result", "status", "body"), [
    (("hello", 201), 201, b"hello"),
    (({"id": 1}, 202), 202, b'{"id":1}'),
    ("plain", 200, b"plain"),
    (["a", 1], 200, b'["a",1]'),
    ({"status": 204}, 204, b""),
])
def test_bodies_and_statuses(result: Any, status: int, body: bytes) -> None:
    got_status, _, got_body = normalize(view_answer(result, VIEW))
    assert (got_status, got_body) == (status, body)


def test_body_status_and_headers() -> None:
    status, headers, body = normalize(view_answer(("made", 201, {"Location": "/a/1"}), VIEW))
    assert status == 201 and ["location", "/a/1"] in [[k.lower(), v] for k, v in headers]
    assert body == b"made"


@pytest.mark.parametrize("result", [("a",), ("a", "b"), ("a", 201, {}, 1), ("a", True)])
def test_another_tuple_says_what_to_return(result: tuple[Any, ...]) -> None:
    with pytest.raises(BadResponse, match=r"return \(body, status\), \(body, status, headers\)"):
        view_answer(result, VIEW)
