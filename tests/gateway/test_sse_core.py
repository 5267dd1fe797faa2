"""The Server-Sent Events core, byte by byte: events, ids, chunks, the end."""

from __future__ import annotations

from cluster.gateway.sse_core import EventStreamCore, event, read_spec


def test_an_event_is_data_lines_and_a_blank_line() -> None:
    assert event("hi") == b"data: hi\n\n"
    assert event("a\nb\r\nc\rd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"
    assert event("") == b"data: \n\n"
    assert event("x", "e1:5") == b"id: e1:5\ndata: x\n\n"
    assert event("x", name="binary") == b"event: binary\ndata: x\n\n"
    assert event("é") == "data: é\n\n".encode()


def test_chunked_output_one_chunk_per_batch_then_the_last_chunk() -> None:
    core = EventStreamCore(chunked=True, numbered="room", retry=1500)
    core.send("one")
    core.send_numbered('{"offset":3}', "room", "ep:3")
    body = b'retry: 1500\n\ndata: one\n\nid: ep:3\ndata: {"offset":3}\n\n'
    assert core.data_to_send() == b"%x\r\n" % len(body) + body + b"\r\n"
    assert core.data_to_send() == b""  # nothing new: no empty chunk (it would end the body)
    assert core.is_open() and not core.close_expected()
    core.close(1001)
    assert core.close_expected() and not core.is_open()
    assert core.data_to_send() == b"0\r\n\r\n"
    assert core.data_to_send() == b""  # the end once
    core.send("late")
    assert core.data_to_send() == b""


def test_only_the_numbered_group_sets_event_ids() -> None:
    core = EventStreamCore(chunked=False, numbered="room")
    core.send_numbered("m", "other", "ep:9")
    core.send_numbered("n", "room", "ep:4")
    core.send_numbered("announce", "room", "")  # a recovery's first frame: no id
    assert core.data_to_send() == b"data: m\n\nid: ep:4\ndata: n\n\ndata: announce\n\n"


def test_binary_is_base64_under_its_own_event_name() -> None:
    core = EventStreamCore(chunked=False, numbered=None)
    core.send(b"\x00\xff")
    assert core.data_to_send() == b"event: binary\ndata: AP8=\n\n"


def test_a_ping_is_a_comment_and_counts_as_answered() -> None:
    core = EventStreamCore(chunked=False, numbered=None)
    core.ping(b"")
    assert core.pongs == 1
    assert core.data_to_send() == b": ping\n\n"
    assert core.receive_data(b"anything at all") == []


def test_read_spec_checks_every_field() -> None:
    assert read_spec([["a"], ["g", "ep", 3], 500]) == (["a"], ("g", "ep", 3), 500)
    assert read_spec([[], ["g", None, None], None]) == ([], ("g", None, None), None)
    assert read_spec([[], None, None]) == ([], None, None)
    for bad in (None, [], [["a"], None], [[1], None, None], ["a", None, None],
                [[], ["g", 3, 3], None], [[], ["g", "e", "3"], None], [[], None, "5"],
                [[], [None, None, None], None], [[], ["g"], None]):
        assert read_spec(bad) is None, bad
