"""cluster run's own key directories: a live run's stay, a dead run's go at the next
start, and one caught between its directory and its lock is left alone a while."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cluster.commands.run_keys import LOCK, UNLOCKED_GRACE, RunKeys


def test_a_live_runs_keys_stay_and_a_dead_runs_go(tmp_path: Path) -> None:
    live = RunKeys(tmp_path)
    mine = Path(live.make())
    dead = tmp_path / "run-dead"
    dead.mkdir()
    (dead / LOCK).write_bytes(b"")  # its holder is gone: the lock is free
    assert RunKeys(tmp_path).remove_stale() == 1
    assert mine.is_dir() and not dead.exists()
    live.remove()
    assert not mine.exists()


def test_a_directory_without_its_lock_is_removed_only_once_old(tmp_path: Path) -> None:
    young = tmp_path / "run-young"
    young.mkdir()
    old = tmp_path / "run-old"
    old.mkdir()
    long_ago = time.time() - UNLOCKED_GRACE - 1
    os.utime(old, (long_ago, long_ago))
    assert RunKeys(tmp_path).remove_stale() == 1
    assert young.is_dir() and not old.exists()


def test_the_parent_is_private(tmp_path: Path) -> None:
    keys = RunKeys(tmp_path / "parent")
    Path(keys.make())
    assert (tmp_path / "parent").stat().st_mode & 0o777 == 0o700
    keys.remove()
