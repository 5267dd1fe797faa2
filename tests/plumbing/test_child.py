"""The ready pipe of a child of `cluster run`: beats and ready lines, byte by byte."""

from __future__ import annotations

import json

import pytest

from cluster.plumbing.child import MAX_LINE, PipeReader


def test_beats_before_and_after_the_ready_line_are_counted() -> None:
    reader = PipeReader()
    line = json.dumps({"role": "gateway", "http": "127.0.0.1:8000"}).encode() + b"\n"
    assert reader.feed(b"...") == []
    assert reader.feed(line + b"..") == [{"role": "gateway", "http": "127.0.0.1:8000"}]
    assert reader.beats == 5


def test_a_line_split_anywhere_is_whole_once_its_newline_comes() -> None:
    line = b'{"port": 8000, "host": "10.0.0.1"}\n'
    for cut in range(1, len(line)):
        reader = PipeReader()
        assert reader.feed(b"." + line[:cut]) == []
        assert reader.feed(line[cut:] + b".") == [{"port": 8000, "host": "10.0.0.1"}]
        assert reader.beats == 2  # the dots inside the line are not beats


def test_garbage_is_refused() -> None:
    with pytest.raises(ValueError):
        PipeReader().feed(b"not json\n")
    with pytest.raises(ValueError):
        PipeReader().feed(b"[1, 2]\n")  # a line is an object
    with pytest.raises(ValueError):
        PipeReader().feed(b"{" + b"x" * MAX_LINE)  # no newline in sight
