"""A disk that fills in the middle of a write, for the logs' unit tests."""

from __future__ import annotations

import errno
import os
from types import ModuleType

import pytest


def fill_the_disk(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> None:
    """`module`'s os.write writes half of what it is given once, then finds no space;
    `monkeypatch.undo()` gives the room back."""
    real = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if len(data) > 4:
            return real(fd, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module.os, "write", half_then_full)
