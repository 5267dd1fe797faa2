"""The key directory `cluster run` makes for itself when it is given no --keys.

Each run's keys live in a directory of its own under one parent per user
(`$TMPDIR/cluster-run-keys-UID`, 0700), with a lock file the run holds for as long as
it lives. The kernel lets go of the lock when the process dies, however it dies, so
the next `cluster run` removes every directory whose lock it can take: a run killed
with -9 leaves its keys behind only until the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger("cluster.run")

LOCK = "held-by-a-running-cluster"
UNLOCKED_GRACE = 60.0  # seconds a directory without its lock file is left alone


def parent_directory() -> Path:
    return Path(tempfile.gettempdir()) / f"cluster-run-keys-{os.getuid()}"


class RunKeys:
    """A private key directory for this run: made by `make`, gone after `remove`."""

    def __init__(self, parent: Path | None = None) -> None:
        self.parent = parent or parent_directory()
        self.path: Path | None = None
        self._lock_fd = -1

    def make(self) -> str:
        self.parent.mkdir(mode=0o700, exist_ok=True)
        if self.parent.stat().st_uid != os.getuid() or self.parent.is_symlink():
            # Someone else's directory in a shared /tmp: make ours elsewhere.
            self.parent = Path(tempfile.mkdtemp(prefix="cluster-run-keys-"))
        self.remove_stale()
        path = Path(tempfile.mkdtemp(prefix="run-", dir=self.parent))
        fd = os.open(path / LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.path, self._lock_fd = path, fd
        return str(path)

    def remove_stale(self) -> int:
        """Remove the key directories of runs that are gone; how many."""
        removed = 0
        for entry in self.parent.iterdir():
            if not entry.is_dir() or entry.is_symlink():
                continue
            try:
                fd = os.open(entry / LOCK, os.O_WRONLY)
            except FileNotFoundError:
                # A run between its mkdtemp and its lock (microseconds), or one killed
                # right there: only the second is still lockless a minute on.
                if time.time() - entry.stat().st_mtime < UNLOCKED_GRACE:
                    continue
                fd = -1
            except OSError:
                continue
            try:
                if fd >= 0:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run's
            finally:
                if fd >= 0:
                    os.close(fd)
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        if removed:
            log.info("removed %d key directories left by runs that were killed", removed)
        return removed

    def remove(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = -1
