"""--max-connections: the decision and its log lines (the 503 itself is tested with
real sockets in tests/integration/test_operations.py)."""

from __future__ import annotations

import logging

import pytest

from cluster.gateway.admission import REFUSAL, Admission


def test_refusals_are_counted_and_logged_once_per_episode(
        caplog: pytest.LogCaptureFixture) -> None:
    admission = Admission(limit=2, tls=False)
    caplog.set_level(logging.INFO, "cluster.gateway")
    assert not admission.full(1)
    assert admission.full(2) and admission.full(3)
    assert not admission.full(1)
    assert admission.full(2)
    assert admission.refused == 3
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["at --max-connections (2): new connections get 503 and are closed",
                     "below --max-connections again; 2 connections were refused",
                     "at --max-connections (2): new connections get 503 and are closed"]


def test_the_refusal_is_a_complete_http_response() -> None:
    head, _, body = REFUSAL.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert f"content-length: {len(body)}".encode() in head
    assert b"retry-after: 1" in head and b"connection: close" in head
