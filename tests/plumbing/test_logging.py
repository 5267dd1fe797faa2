"""The log formats: one line per event, whatever a client put in the message."""

from __future__ import annotations

import json
import logging
import sys

from cluster.plumbing.lifecycle import JsonFormatter, TextFormatter, escape_controls

FORGED = "x\r\n2026-01-01 00:00:00,000 coordinator[1] ERROR forged\x1b[2J\x1b]0;t\x07\x08\x7f\x85"


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("cluster.gateway.ws", logging.INFO, __file__, 1, message, args,
                             info)


def test_control_characters_are_escaped_in_text_logs() -> None:
    line = TextFormatter("gateway").format(record("closed 1002: %s", FORGED))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line.endswith("closed 1002: x\\x0d\\x0a2026-01-01 00:00:00,000 coordinator[1] ERROR "
                         "forged\\x1b[2J\\x1b]0;t\\x07\\x08\\x7f\\x85")


def test_a_tab_and_unicode_text_survive_as_text_can() -> None:
    assert escape_controls("café\tété") == "café\\x09été"


def test_a_traceback_still_follows_on_lines_of_its_own() -> None:
    lines = TextFormatter("worker").format(record("failed: %s", "a\nb", exc=True)).splitlines()
    assert lines[0].endswith("failed: a\\x0ab") and lines[1].startswith("Traceback")


def test_the_request_id_is_escaped_too() -> None:
    rec = record("GET /")
    rec.request_id = "gw/1\nforged"
    assert TextFormatter("gateway").format(rec).endswith("request_id=gw/1\\x0aforged")


def test_json_logs_stay_one_line_with_the_text_intact() -> None:
    line = JsonFormatter("gateway").format(record("closed: %s", FORGED))
    assert "\n" not in line and json.loads(line)["message"] == f"closed: {FORGED}"
    assert not any(0x7f <= ord(c) < 0xa0 or ord(c) < 0x20 for c in line)


def test_the_request_id_ends_the_first_line_not_the_traceback() -> None:
    rec = record("request gw/7: handler raised", exc=True)
    rec.request_id = "gw/7"
    lines = TextFormatter("worker").format(rec).splitlines()
    assert lines[0].endswith("handler raised request_id=gw/7")
    assert lines[-1] == "ValueError: boom"
