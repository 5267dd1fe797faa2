"""Process plumbing shared by every role: logging, the loop, signals, readiness."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from cluster.errors import StoppedWhileStarting

T = TypeVar("T")


def setup_logging(level: str, role: str, fmt: str = "text") -> None:
    """One line per event on stderr, as text or as JSON objects. A record logged with
    `extra={"request_id": ...}` carries the id the gateway and the worker share."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(role) if fmt == "json" else TextFormatter(role))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


# Control characters (C0, DEL, C1) as \xNN: a message carries what clients sent (close
# reasons, paths, header values, h2's error text), and a raw CR or LF in it would let a
# client write a line of its own into the log, ESC sequences rewrite a terminal.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}


# JSON escapes C0 itself; DEL and C1 (0x9b is a terminal's CSI) as \u00NN, still JSON.
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in range(0x7f, 0xa0)}


def escape_controls(text: str) -> str:
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """One line per event. The message is escaped; a traceback, our own text, follows
    on lines of its own as Python prints it."""

    def __init__(self, role: str) -> None:
        super().__init__(f"%(asctime)s {role}[{os.getpid()}] %(levelname)s %(name)s: "
                         "%(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} request_id={escape_controls(str(request_id))}" if request_id else line


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        self.pid = os.getpid()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "role": self.role,
            "pid": self.pid,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            # The traceback stays inside the one line, as a field.
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str).translate(_JSON_ESCAPES)


def raise_fd_limit() -> None:
    """Servers hold a socket per client: let the soft limit go up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


BEAT = b"."  # one byte on the ready pipe: "my loop still runs"


def report_ready(fd: int, info: dict[str, Any]) -> None:
    """Tell whoever started us (the supervisor, a test) where we listen: one JSON
    line. The pipe stays open for the beats (see `beat_until_closed`)."""
    if fd < 0:
        return
    try:
        os.write(fd, (json.dumps(info) + "\n").encode())
    except OSError as exc:  # the parent went away: nobody to tell
        logging.getLogger("cluster").debug("ready fd %d: %s", fd, exc)


async def beat_until_closed(fd: int, interval: float) -> None:
    """Write BEAT on `fd` every `interval` from the loop, so a supervisor can tell a
    hung process (stopped, or its loop blocked) from a live one. Never blocks: a
    parent that does not read loses beats, not our time; one that closed the pipe
    ends the beats."""
    if fd < 0:
        return
    os.set_blocking(fd, False)
    try:
        while True:
            try:
                os.write(fd, BEAT)
            except BlockingIOError:
                pass  # the parent reads later, or not at all: it has beats enough
            except OSError:
                return  # the parent went away or closed its end
            await asyncio.sleep(interval)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)



async def unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T:
    """`work`'s result, or StoppedWhileStarting (and `work` cancelled) if `stop` is
    set first: a process asked to stop while it waits for its peers stops now, not
    when the wait times out."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise StoppedWhileStarting
    return task.result()


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
                        ready_fd: int = -1, beat_interval: float = 1.0) -> None:
    """Run `main(stop)` on uvloop; SIGINT/SIGTERM set `stop` for an orderly exit.
    From the start, the loop beats on `ready_fd` (see `beat_until_closed`)."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        beats = loop.create_task(beat_until_closed(ready_fd, beat_interval))
        try:
            await main(stop)
        except StoppedWhileStarting:
            logging.getLogger("cluster").info("stopped while starting")
        finally:
            beats.cancel()

    raise_fd_limit()
    if ready_fd >= 0:
        die_with_parent()
    uvloop.run(runner())


def die_with_parent() -> None:
    """A process started by a supervisor (or a test) gets SIGTERM, and drains, if its
    parent dies: killed with -9, it cannot stop its children, and they would serve on
    unsupervised (Linux's PR_SET_PDEATHSIG; elsewhere nothing is done)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError) as exc:
        logging.getLogger("cluster").debug("PR_SET_PDEATHSIG: %s", exc)
    # (A parent that died in the few milliseconds before this call is not noticed:
    # the reaper, often PID 1, is also a legitimate parent inside a container.)
