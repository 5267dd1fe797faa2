"""The parts of a response between a worker and the gateway: each maker's envelope,
through the wire, is read back as the part it made."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.plumbing import wire
from cluster.plumbing.response_parts import (
    ABORT,
    Abort,
    BodyPart,
    End,
    ResponseHead,
    abort_envelope,
    events_envelope,
    head_envelope,
    is_final,
    part_envelope,
    read_part,
)


def through_the_wire(env: dict[str, Any]) -> dict[str, Any]:
    """As the gateway gets it: encoded, decoded and checked by wire.decode_frame."""
    (decoded,) = wire.decode_frame(wire.encode([env]))
    return decoded


def test_a_whole_response_is_one_head() -> None:
    part = read_part(through_the_wire(head_envelope(7, 201, b"x-a: 1\r\n", b"hi", False)))
    assert isinstance(part, ResponseHead)
    assert (part.status, part.fields, part.body, part.more, part.length, part.events) == \
        (201, b"x-a: 1\r\n", b"hi", False, None, None)
    assert is_final(part)


def test_a_stream_is_a_head_then_parts_then_an_end() -> None:
    head = read_part(through_the_wire(head_envelope(7, 200, b"", b"a", True, 3)))
    middle = read_part(through_the_wire(part_envelope(7, b"b", True)))
    end = read_part(through_the_wire(part_envelope(7, b"c", False)))
    assert isinstance(head, ResponseHead) and head.more and head.length == 3
    assert isinstance(middle, BodyPart) and middle.body == b"b"
    assert isinstance(end, End) and end.body == b"c"
    assert [is_final(p) for p in (head, middle, end)] == [False, False, True]


def test_an_abort_is_final_and_carries_nothing() -> None:
    part = read_part(through_the_wire(abort_envelope(7)))
    assert part is ABORT and isinstance(part, Abort) and is_final(part)


def test_an_event_stream_is_a_head_with_its_events() -> None:
    part = read_part(through_the_wire(events_envelope(7, b"", [["g"], None, 1000])))
    assert isinstance(part, ResponseHead) and part.events == [["g"], None, 1000]
    assert part.status == 200 and not part.more


@pytest.mark.parametrize("body", ["text", 5, None, [b"x"]])
def test_a_body_that_is_not_bytes_counts_as_none(body: object) -> None:
    part = read_part({"k": wire.RESPONSE, "id": 1, "more": True, "body": body})
    assert isinstance(part, BodyPart) and part.body == b""


@pytest.mark.parametrize("length", ["3", True, 2.5])
def test_a_declared_length_that_is_not_a_whole_number_is_ignored(length: object) -> None:
    part = read_part({"k": wire.RESPONSE, "id": 1, "more": True, "status": 200,
                      "head": b"", "body": b"", "length": length})
    assert isinstance(part, ResponseHead) and part.length is None


def test_a_head_keeps_what_the_worker_sent_for_the_gateway_to_check() -> None:
    # check_head (client_context.py) judges status and header block, once per head.
    part = read_part({"k": wire.RESPONSE, "id": 1, "more": False, "status": "200",
                      "head": "x-a: 1\r\n"})
    assert isinstance(part, ResponseHead)
    assert (part.status, part.fields, part.body) == ("200", "x-a: 1\r\n", b"")
