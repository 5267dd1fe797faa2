"""One child process of `cluster run`, and the pipe it reports on.

A child gets the write end of a pipe as `--ready-fd`. On it, it writes one JSON
line once it serves (where it listens), and from the moment its loop runs, one
BEAT byte every heartbeat interval (see `lifecycle.beat_until_closed`). The parent
reads both without blocking: the line says "ready", the beats say "my loop still
turns". A child whose beats stop (SIGSTOP, a deadlock, a loop blocked by a handler)
is hung, though its process is alive.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cluster.errors import ChildFailed
from cluster.plumbing.lifecycle import BEAT

log = logging.getLogger("cluster.supervisor")

MAX_LINE = 64 * 1024  # a ready line is a few hundred bytes; more is not one
MIN_BACKOFF = 0.5



class PipeReader:
    """Sans-I/O: bytes from a child's ready pipe -> beats counted, ready lines parsed.

    Beats come only between lines: a line is one write of less than PIPE_BUF bytes,
    which the kernel never interleaves with another write."""

    def __init__(self) -> None:
        self.buffer = b""
        self.beats = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.buffer += data
        lines: list[dict[str, Any]] = []
        while self.buffer:
            if self.buffer.startswith(BEAT):
                rest = self.buffer.lstrip(BEAT)
                self.beats += len(self.buffer) - len(rest)
                self.buffer = rest
                continue
            line, newline, rest = self.buffer.partition(b"\n")
            if not newline:
                if len(self.buffer) > MAX_LINE:
                    raise ValueError("a ready line longer than 64 KiB")
                break
            self.buffer = rest
            info = json.loads(line)
            if not isinstance(info, dict):
                raise ValueError(f"a ready line that is not an object: {line[:80]!r}")
            lines.append(info)
        return lines


def read_ready(fd: int, proc: subprocess.Popen[bytes], timeout: float,
               name: str) -> dict[str, Any]:
    """Block until the child's ready line (skipping beats), its exit, or `timeout`."""
    reader = PipeReader()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ChildFailed(f"{name} did not become ready within {timeout:.0f}s")
        readable, _, _ = select.select([fd], [], [], min(left, 0.2))
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise ChildFailed(f"{name} exited before it was ready (code {proc.wait(5)})")
            lines = reader.feed(chunk)
            if lines:
                return lines[0]
        elif proc.poll() is not None:
            raise ChildFailed(f"{name} exited before it was ready (code {proc.returncode})")


@dataclass
class Child:
    """A child's command, its current process, and what its pipe told us."""

    name: str
    role: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    fd: int = -1  # our end of its ready pipe, non-blocking; -1 once it closed
    reader: PipeReader = field(default_factory=PipeReader)
    ready: dict[str, Any] | None = None  # its ready line, once written
    started_at: float = 0.0
    last_beat: float = 0.0  # 0.0: none yet (it is still importing, loading the handler)
    backoff: float = MIN_BACKOFF
    restart_at: float | None = None
    restarts: int = 0
    retiring: bool = False  # asked to leave (a rolling restart): its exit is no failure

    def spawn(self) -> None:
        self.close_pipe()
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen([*self.argv, "--ready-fd", str(write_fd)],
                                     pass_fds=(write_fd,))
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.fd = read_fd
        self.reader = PipeReader()
        self.ready = None
        self.started_at = time.monotonic()
        self.last_beat = 0.0
        log.info("started %s pid %d", self.name, self.proc.pid)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def read(self, now: float) -> None:
        """Take what the pipe holds: beats and the ready line."""
        while self.fd >= 0:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                return
            if not chunk:  # it exited, or closed the pipe itself
                self.close_pipe()
                return
            beats = self.reader.beats
            try:
                lines = self.reader.feed(chunk)
            except ValueError as exc:
                log.error("%s wrote garbage on its ready pipe (%s); not reading it", self.name,
                          exc)
                self.close_pipe()
                return
            if self.reader.beats != beats:
                self.last_beat = now
            if lines and self.ready is None:
                self.ready = lines[0]
                self.last_beat = now

    def wait_ready(self, timeout: float,
                   abandon: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Block until ready; ChildFailed if it exits, `timeout` passes or `abandon()`
        says so (a signal asked us to stop) first."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.ready is None:
            left = deadline - time.monotonic()
            if abandon():
                raise ChildFailed(f"stopped while waiting for {self.name} to be ready")
            if left <= 0:
                raise ChildFailed(f"{self.name} did not become ready within {timeout:.0f}s")
            if self.fd < 0 or self.proc.poll() is not None:
                raise ChildFailed(f"{self.name} exited before it was ready "
                                  f"(code {self.proc.wait(5)})")
            select.select([self.fd], [], [], min(left, 0.2))
            self.read(time.monotonic())
        return self.ready

    def silent_for(self, now: float) -> float:
        """Seconds since its loop last beat (since its start, before the first beat)."""
        return now - (self.last_beat or self.started_at)

    def close_pipe(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
