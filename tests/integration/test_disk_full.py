"""The coordinator's disk fills: writes refused (503), nothing acknowledged lost,
reads go on, writes resume by themselves once there is room. The data directory is
a small tmpfs this test mounts (as root) and unmounts."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import cluster, wait_for
from tests.httpclient import get

STATE_APP = "tests.apps.state_app:app"


@contextlib.contextmanager
def small_disk(size: str) -> Iterator[Path]:
    mount = Path(tempfile.mkdtemp(prefix="cluster-small-disk-"))
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (root needed): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def fill(path: Path) -> None:
    """Write zeros until the disk says no more."""
    with open(path, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    with contextlib.suppress(OSError):
        os.sync()


def put(port: int, key: str, value: str) -> tuple[int, str | None]:
    response = get(port, f"/kv/{key}", method="PUT", body=value.encode())
    return response.status, response.header("retry-after")


def test_a_full_disk_refuses_writes_keeps_reads_and_recovers(tmp_path: Path) -> None:
    with small_disk("4m") as disk, cluster() as c:
        data = disk / "data"
        c.coordinator.terminate()
        coordinator = c.start("coordinator", "--coordinator-bind", c.endpoint, "--data-dir",
                              str(data), "--fsync", "always")
        gw = c.gateway()
        c.worker(STATE_APP, "--state-timeout", "2")
        port = int(gw.ready["port"])
        acknowledged = {}
        for i in range(20):
            assert put(port, f"k{i}", "v" * 100)[0] == 200
            acknowledged[f"k{i}"] = "v" * 100
        filler = disk / "filler"
        fill(filler)
        # Values big enough that the log cannot take one more record.
        status, retry = put(port, "big", "x" * 200_000)
        assert (status, retry) == (503, "1")
        coordinator.wait_log("state log write failed")
        status, retry = put(port, "small", "y")
        assert (status, retry) == (503, "1")  # refused at once while the disk is full
        for key, value in acknowledged.items():  # reads go on
            response = get(port, f"/kv/{key}")
            assert response.status == 200 and json.loads(response.body)["value"] == value
        probe = get(int(coordinator.ready["metrics"].rpartition(":")[2]), "/ready")
        assert json.loads(probe.body)["writable"] is False
        filler.unlink()
        wait_for(lambda: put(port, "after", "z")[0] == 200, 10, "writes to resume")
        coordinator.wait_log("has room again")
        # Nothing acknowledged was lost, the refused write left nothing: a restart
        # from the files gives exactly the acknowledged keys.
        coordinator.kill()
        c.start("coordinator", "--coordinator-bind", c.endpoint, "--data-dir", str(data))
        keys = sorted([*acknowledged, "after"])
        wait_for(lambda: json.loads(get(port, "/kv-keys").body) == keys, 10,
                 "the restarted coordinator's state at the worker")
