"""The bytes of request bodies one gateway holds before they are whole, all its
connections together (`--max-body-buffer`).

`--max-body` bounds one request, the body timeouts bound how long a client may take,
and this bounds the sum: without it, 10,000 connections each holding a body one byte
short of 1 MiB would hold 10 GiB. A body that would take the total past the limit is
refused with 503 and Retry-After (its connection closes): a client that is refused
may try again in a moment, when the bodies that filled the budget have finished or
timed out. Taking and giving back are plain counts, so the HTTP cores stay sans-I/O.
"""

from __future__ import annotations


class BodyBudget:
    __slots__ = ("held", "limit", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0  # body bytes received, of requests not yet whole
        self.refused = 0  # requests refused for want of room

    def take(self, nbytes: int) -> bool:
        """Count `nbytes` more as held; False (and nothing counted) past the limit."""
        if self.held + nbytes > self.limit:
            self.refused += 1
            return False
        self.held += nbytes
        return True

    def give(self, nbytes: int) -> None:
        """Bytes no longer held as an unfinished body: whole now, refused, or gone."""
        self.held -= nbytes


UNLIMITED = 1 << 62  # a budget for cores used alone (unit tests, tools)
