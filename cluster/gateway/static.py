"""Static files at the gateway (`--static /url=DIR`), sans-I/O: what to answer.

`plan()` maps a request to a file under one of the mounted directories and decides
the answer: 200 or 206 (one byte range) with the headers, 304 when the client's
ETag matches, 416 for a range past the end, 404 for anything outside the directory
(`..`, encoded or not, symlinks leading out, NUL bytes), for a dotfile (`.env`,
`.git/config`: unless the mount allows them), and for a file named with a trailing
slash; 405 for other methods. The connection then streams the file in chunks; it is
never read whole.

Whatever the file system says about a path (a name too long, no permission, a symlink
loop) is an answer too: 404, or 403 for a permission, with one log line. It must never
escape as an exception: over HTTP/2 that would end the whole connection, other
streams' downloads with it.
"""

from __future__ import annotations

import email.utils
import errno
import logging
import mimetypes
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from cluster.errors import ConfigError

log = logging.getLogger("cluster.gateway.static")


@dataclass(frozen=True)
class Mount:
    prefix: str  # "/static", no trailing slash
    root: Path  # resolved directory
    dotfiles: bool = False  # serve names that begin with "." (--static-dotfiles)


@dataclass(frozen=True)
class FilePlan:
    path: Path
    status: int  # 200 or 206
    headers: list[tuple[str, str]]
    offset: int
    length: int  # bytes of the file to send


@dataclass(frozen=True)
class Refusal:
    status: int  # 304, 404, 405, 416
    headers: list[tuple[str, str]]


def parse_mounts(spec: str, dotfiles: bool = False) -> list[Mount]:
    """'/static=./public,/assets=/srv/a' -> mounts, longest prefix first."""
    mounts = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        prefix, sep, directory = item.partition("=")
        if not sep or not prefix.startswith("/") or not directory:
            raise ConfigError(f"--static {item!r}: use /url=DIRECTORY")
        root = Path(directory).resolve()
        if not root.is_dir():
            raise ConfigError(f"--static {item!r}: {directory} is not a directory")
        mounts.append(Mount(prefix.rstrip("/") or "", root, dotfiles))
    return sorted(mounts, key=lambda m: len(m.prefix), reverse=True)


def _match(mounts: list[Mount], path: str) -> tuple[Mount, str] | None:
    for mount in mounts:
        if path == mount.prefix or path.startswith(mount.prefix + "/"):
            return mount, path[len(mount.prefix):]
    return None


def etag_of(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _byte_range(value: str, size: int) -> tuple[int, int] | bool | None:
    """(offset, length) for one 'bytes=' range; None: ignore the header (serve it
    all); False: unsatisfiable (416)."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units, several ranges: the whole file is a valid answer
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:  # the last N bytes
            n = int(last)
            if n <= 0:
                return False
            return max(0, size - n), min(n, size)
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        return False  # even an open range ("bytes=10-" of 10 bytes): RFC 9110 §14.1.2
    if start < 0 or end < start:
        return None
    end = min(end, size - 1)
    return start, end - start + 1


def _find(mount: Mount, relative: str) -> tuple[Path, os.stat_result | None]:
    """The file a mount-relative path names and its stat; None for the stat when there
    is no regular file to serve there. Raises what the file system says."""
    candidate = (mount.root / relative.lstrip("/")).resolve()
    if candidate != mount.root and not candidate.is_relative_to(mount.root):
        return candidate, None  # '..' or a symlink leading out: as if it did not exist
    try:
        st = candidate.stat()
    except FileNotFoundError:
        return candidate, None
    if stat.S_ISDIR(st.st_mode):
        candidate = candidate / "index.html"
        try:
            st = candidate.stat()
        except FileNotFoundError:
            return candidate, None
    elif relative.endswith("/"):
        return candidate, None  # a file is not a directory: /index.html/ names nothing
    if not stat.S_ISREG(st.st_mode):
        return candidate, None
    return candidate, st


def status_for(exc: OSError | RuntimeError) -> int:
    """What a client is told when the file system refuses a path: 403 for a permission,
    404 for the rest (too long a name, a symlink loop, ...), never an error page."""
    code = exc.errno if isinstance(exc, OSError) else errno.ELOOP
    return 403 if code in (errno.EACCES, errno.EPERM) else 404


def plan(mounts: list[Mount], method: str, target: str,
         headers: list[tuple[str, str]]) -> FilePlan | Refusal | None:
    """What to answer, or None when the path is under no mount (a worker's request)."""
    raw_path = target.partition("?")[0]
    found = _match(mounts, raw_path)
    if found is None:
        return None
    mount, rest = found
    relative = unquote(rest)
    if "\x00" in relative or "\\" in relative:
        return Refusal(404, [])
    parts = relative.split("/")
    if not mount.dotfiles and any(p.startswith(".") and p not in (".", "..") for p in parts):
        return Refusal(404, [])  # .env, .git/config: never meant for the public
    try:
        candidate, st = _find(mount, relative)
    except (OSError, RuntimeError) as exc:  # RuntimeError: resolve() met a symlink loop
        status = status_for(exc)
        log.info("static %s: %s; %d", raw_path[:200],
                 exc.strerror if isinstance(exc, OSError) else exc, status)
        return Refusal(status, [])
    if st is None:
        return Refusal(404, [])
    if method not in ("GET", "HEAD"):
        return Refusal(405, [("allow", "GET, HEAD")])
    etag = etag_of(st)
    request = {name: value for name, value in headers}
    common = [("etag", etag),
              ("last-modified", email.utils.formatdate(st.st_mtime, usegmt=True)),
              ("accept-ranges", "bytes")]
    match = request.get("if-none-match")
    if match is not None and (match.strip() == "*" or etag in
                              [m.strip().removeprefix("W/") for m in match.split(",")]):
        return Refusal(304, common)
    content_type, _ = mimetypes.guess_type(candidate.name)
    content_type = content_type or "application/octet-stream"
    if content_type.startswith("text/") or content_type in ("application/javascript",
                                                            "application/json"):
        content_type += "; charset=utf-8"
    size = st.st_size
    wanted = request.get("range")
    if_range = request.get("if-range")
    if wanted is not None and (if_range is None or if_range.strip() == etag):
        span = _byte_range(wanted, size)
        if span is False:
            return Refusal(416, [("content-range", f"bytes */{size}"), *common])
        if isinstance(span, tuple):
            offset, length = span
            return FilePlan(candidate, 206, [
                ("content-type", content_type),
                ("content-range", f"bytes {offset}-{offset + length - 1}/{size}"),
                ("content-length", str(length)), *common], offset, length)
    return FilePlan(candidate, 200, [("content-type", content_type),
                                     ("content-length", str(size)), *common], 0, size)
