"""What every client connection shares: the check of a worker's response head, whose
failure is the client's 502 (HTTP/1.1 and HTTP/2 alike)."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.gateway.client_context import ConnectionContext, check_head
from cluster.gateway.exchange import Exchange
from cluster.gateway.http_core import HttpLimits
from cluster.gateway.ws_core import WsOptions
from cluster.plumbing import wire
from cluster.plumbing.response_parts import ResponsePart, read_part


def context() -> ConnectionContext:
    return ConnectionContext(HttpLimits(), Nowhere(), 10, 5, 32, WsOptions(),
                             gateway_id="gw")


class Nowhere:
    """An upstream that takes requests and answers none (these tests answer by hand)."""

    def submit(self, exchange: Exchange) -> None:
        pass

    def client_gone(self, exchange: Exchange) -> None:
        pass

    def stream_credit(self, exchange: Exchange, nbytes: int) -> None:
        pass


def first(fields: dict[str, Any], more: bool = False) -> ResponsePart:
    """A worker's first RESPONSE envelope with these fields, as the gateway reads it."""
    return read_part({"k": wire.RESPONSE, "id": 1, "more": more, **fields})


def exchange(method: str = "GET") -> Exchange:
    return Exchange({}, method, "1.1", True, None)  # type: ignore[arg-type]


def test_a_good_head_is_checked_once_and_remembered() -> None:
    ctx, ex = context(), exchange()
    head: dict[str, Any] = {"status": 201, "head": b"x-a: 1\r\n"}
    assert check_head(ctx, ex, first(head)) == (201, b"x-a: 1\r\n")
    assert ex.status == 201 and not ex.head_only and b"x-a: 1\r\n" in ctx.good_heads


@pytest.mark.parametrize(("status", "head"), [
    (204, b""), (304, b""), (101, b""),
])
def test_statuses_without_a_body(status: int, head: bytes) -> None:
    ex = exchange()
    assert check_head(context(), ex, first({"status": status, "head": head})) is not None
    assert ex.head_only


def test_head_requests_get_no_body() -> None:
    ex = exchange("HEAD")
    check_head(context(), ex, first({"status": 200, "head": b""}))
    assert ex.head_only


@pytest.mark.parametrize(("part", "why"), [
    ({"status": "200", "head": b""}, "status '200'"),
    ({"status": 42, "head": b""}, "status 42"),
    ({"status": True, "head": b""}, "status True"),
    ({"status": 200, "head": b"x-a: 1\r\n\r\nHTTP/1.1 200 OK\r\n"}, "malformed"),
    ({"status": 200, "head": b"content-length: 5\r\n"}, "malformed"),  # a framing field
    ({"status": 200, "head": "x-a: 1\r\n"}, "malformed"),  # not bytes
    ({"body": b"hello"}, "a body part before the head"),  # no status: not a head
])
def test_a_broken_head_is_a_502_and_one_log_line(
        part: dict[str, Any], why: str, caplog: pytest.LogCaptureFixture) -> None:
    ex = exchange()
    assert check_head(context(), ex, first(part, more=True)) is None
    assert ex.status == 502 and ex.head_only
    (record,) = [r for r in caplog.records if "invalid response" in r.getMessage()]
    assert why in record.getMessage()
