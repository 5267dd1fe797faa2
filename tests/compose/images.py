"""The images `docker compose up` needs, built here from Debian's packages: no image
registry is reachable from this kind of machine.

- The base: a Debian bookworm root (debootstrap, with python3 and pip) imported as
  `python:3.11-slim` (what deploy/Dockerfile starts FROM; bookworm's python3 is 3.11)
  and as `debian:bookworm-slim`. Like the official Python image, its pip installs
  into the system: Debian's "externally managed" marker is removed, and `python`
  and `pip` are on the PATH. The certificate authorities this machine adds go in
  too (see build_base).
- Prometheus: Debian's package on that base (deploy/images/prometheus), tagged as
  the compose file names it.

Each is built once per machine and kept in podman's storage.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness import ROOT

BASE_TAGS = ("docker.io/library/python:3.11-slim", "docker.io/library/debian:bookworm-slim")
PROMETHEUS_TAG = "docker.io/prom/prometheus:v2.53.0"
MIRROR = "http://deb.debian.org/debian"
LOCAL_CAS = "/usr/local/share/ca-certificates"


def exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag]).returncode == 0


def size_mib(tag: str) -> float:
    out = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", tag],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip()) / 2**20


def build_base() -> float:
    """The base image, if missing; seconds it took (0 when it was there)."""
    if all(exists(tag) for tag in BASE_TAGS):
        return 0.0
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="cluster-base-", dir="/var/tmp"))
    try:
        root = work / "root"
        subprocess.run(["debootstrap", "--variant=minbase",
                        "--include=python3,python3-pip,python3-venv,ca-certificates",
                        "bookworm", str(root), MIRROR], check=True,
                       stdout=subprocess.DEVNULL)
        for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        # The certificate authorities this machine adds (an egress proxy that inspects
        # TLS): pip and apt inside image builds must trust what the host trusts.
        extra = sorted(Path(LOCAL_CAS).glob("*.crt"))
        if extra:
            target = root / LOCAL_CAS.lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            for cert in extra:
                shutil.copy(cert, target / cert.name)
            subprocess.run(["chroot", str(root), "update-ca-certificates"], check=True,
                           stdout=subprocess.DEVNULL)
        for name, target in (("python", "python3"), ("pip", "pip3")):
            link = root / "usr/local/bin" / name
            if not link.exists():
                link.symlink_to(f"/usr/bin/{target}")
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        with subprocess.Popen(["tar", "-C", str(root), "-c", "."],
                              stdout=subprocess.PIPE) as tar:
            subprocess.run(["podman", "import", "--change", 'CMD ["python3"]', "-",
                            BASE_TAGS[0]], stdin=tar.stdout, check=True,
                           stdout=subprocess.DEVNULL)
        if tar.returncode != 0:
            raise RuntimeError("tar of the base root failed")
        for tag in BASE_TAGS[1:]:
            subprocess.run(["podman", "tag", BASE_TAGS[0], tag], check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return time.monotonic() - began


def build_prometheus() -> float:
    if exists(PROMETHEUS_TAG):
        return 0.0
    began = time.monotonic()
    subprocess.run(["podman", "build", "--ulimit", "nofile=16384:16384", "--ulimit",
                    "nproc=4096:4096", "-t", PROMETHEUS_TAG,
                    str(ROOT / "deploy" / "images" / "prometheus")], check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - began
