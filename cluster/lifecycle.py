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
from typing import Any

import uvloop


def setup_logging(level: str, role: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s {role}[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def raise_fd_limit() -> None:
    """Servers hold a socket per client: let the soft limit go up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def report_ready(fd: int, info: dict[str, Any]) -> None:
    """Tell whoever started us (the supervisor, a test) where we listen."""
    if fd < 0:
        return
    try:
        os.write(fd, (json.dumps(info) + "\n").encode())
        os.close(fd)
    except OSError as exc:  # the parent went away: nobody to tell
        logging.getLogger("cluster").debug("ready fd %d: %s", fd, exc)


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run `main(stop)` on uvloop; SIGINT/SIGTERM set `stop` for an orderly exit."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    raise_fd_limit()
    uvloop.run(runner())
