"""Homor's list at the gateway and in handlers: static files, gzip, cookies, redirects."""

from __future__ import annotations

import gzip
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Cluster, Proc, cluster, rss_kib
from tests.httpclient import get

APP = "tests.apps.handlers:app"
BIG = 32 * 1024 * 1024


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Proc, Path]]:
    root = tmp_path_factory.mktemp("public")
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "app.js").write_text("console.log(1)\n" * 200)
    (root / "data.bin").write_bytes(bytes(range(256)) * 4)
    (root / "sub").mkdir()
    (root / "sub" / "note.txt").write_text("inside")
    with open(root / "big.bin", "wb") as f:
        f.truncate(BIG)  # sparse: zeros without writing them
    outside = root.parent / "secret.txt"
    outside.write_text("never served")
    (root / "link").symlink_to(outside)
    with cluster() as c:
        gw = c.gateway("--static", f"/static={root}")
        c.worker(APP)
        yield c, gw, root


def port(gw: Proc) -> int:
    return int(gw.ready["port"])



def test_files_with_types_and_validators(site: tuple[Cluster, Proc, Path]) -> None:
    _c, gw, _root = site
    resp = get(port(gw), "/static/app.js")
    assert resp.status == 200 and resp.body == b"console.log(1)\n" * 200
    assert resp.header("content-type") in ("text/javascript; charset=utf-8",
                                           "application/javascript; charset=utf-8")
    assert resp.header("accept-ranges") == "bytes"
    etag = resp.header("etag")
    assert etag and resp.header("last-modified")
    again = get(port(gw), "/static/app.js", headers={"If-None-Match": etag})
    assert again.status == 304 and again.body == b""
    assert get(port(gw), "/static/").body == b"<h1>home</h1>"  # index.html
    assert get(port(gw), "/static/sub/note.txt").body == b"inside"
    assert get(port(gw), "/static/data.bin").header("content-type") == \
        "application/octet-stream"
    assert get(port(gw), "/items/1").status == 200  # everything else: the workers


def test_ranges(site: tuple[Cluster, Proc, Path]) -> None:
    _c, gw, _root = site
    data = bytes(range(256)) * 4
    resp = get(port(gw), "/static/data.bin", headers={"Range": "bytes=10-19"})
    assert resp.status == 206 and resp.body == data[10:20]
    assert resp.header("content-range") == "bytes 10-19/1024"
    assert get(port(gw), "/static/data.bin", headers={"Range": "bytes=-4"}).body == data[-4:]
    assert get(port(gw), "/static/data.bin", headers={"Range": "bytes=1000-"}).body == \
        data[1000:]
    bad = get(port(gw), "/static/data.bin", headers={"Range": "bytes=5000-6000"})
    assert bad.status == 416 and bad.header("content-range") == "bytes */1024"
    # Several ranges, or a stale If-Range: the whole file is a correct answer.
    assert get(port(gw), "/static/data.bin",
               headers={"Range": "bytes=0-1,5-6"}).status == 200
    assert get(port(gw), "/static/data.bin",
               headers={"Range": "bytes=0-1", "If-Range": '"old"'}).status == 200


@pytest.mark.parametrize("path", [
    "/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/..%2fsecret.txt",
    "/static/sub/../../secret.txt", "/static/%2E%2E%2Fsecret.txt", "/static/link",
    "/static/nothing.txt", "/static/sub%00.txt", "/static/..%5csecret.txt",
])
def test_paths_never_leave_the_directory(site: tuple[Cluster, Proc, Path], path: str) -> None:
    _c, gw, _root = site
    resp = get(port(gw), path)
    assert resp.status == 404 and b"never served" not in resp.body


def test_methods_and_head(site: tuple[Cluster, Proc, Path]) -> None:
    _c, gw, _root = site
    resp = get(port(gw), "/static/app.js", method="POST", body=b"x")
    assert resp.status == 405 and resp.header("allow") == "GET, HEAD"
    with socket.create_connection(("127.0.0.1", port(gw)), timeout=5) as s:
        s.sendall(b"HEAD /static/data.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 1024" in head.lower()
    assert body == b""


def test_a_big_file_is_streamed_not_loaded(site: tuple[Cluster, Proc, Path]) -> None:
    _c, gw, _root = site
    before = rss_kib(gw.pid)
    with socket.create_connection(("127.0.0.1", port(gw)), timeout=10) as s:
        s.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = 0
        peak = before
        while chunk := s.recv(1 << 20):
            received += len(chunk)
            peak = max(peak, rss_kib(gw.pid))
    assert received > BIG  # the head and every byte
    assert peak - before < 16 * 1024, f"gateway grew {peak - before} KiB for a 32 MiB file"


def test_gzip_above_the_threshold_when_accepted(site: tuple[Cluster, Proc, Path]) -> None:
    _c, gw, _root = site
    accept = {"Accept-Encoding": "gzip, deflate"}
    resp = get(port(gw), "/text/5000", headers=accept)
    assert resp.header("content-encoding") == "gzip"
    assert resp.header("vary") == "accept-encoding"
    assert gzip.decompress(resp.body) == b"a" * 5000
    assert int(resp.header("content-length") or 0) == len(resp.body) < 5000
    small = get(port(gw), "/text/100", headers=accept)
    assert small.header("content-encoding") is None and small.body == b"a" * 100
    assert get(port(gw), "/text/5000").header("content-encoding") is None
    refused = get(port(gw), "/text/5000", headers={"Accept-Encoding": "gzip;q=0"})
    assert refused.header("content-encoding") is None
    # Files keep their bytes (ranges and ETags stay true).
    assert get(port(gw), "/static/app.js", headers=accept).header("content-encoding") is None


def test_cookies_and_redirects(site: tuple[Cluster, Proc, Path]) -> None:
    _c, gw, _root = site
    resp = get(port(gw), "/cookies", headers={"Cookie": "a=1; b=two"})
    assert resp.status == 200 and b'"got":{"a":"1","b":"two"}' in resp.body
    assert resp.header("set-cookie") == "seen=yes; HttpOnly; Path=/"
    moved = get(port(gw), "/go")
    assert moved.status == 303 and moved.header("location") == "/items/1"


def test_an_app_view_may_answer_as_flask_does(site: tuple[Cluster, Proc, Path]) -> None:
    _, gw, _ = site
    made = get(port(gw), "/flask/201")
    assert (made.status, made.body, made.header("x-flask")) == (201, b"made", "yes")
    assert (get(port(gw), "/flask/202").status, get(port(gw), "/flask/202").body) == \
        (202, b"hello")
    wrong = get(port(gw), "/flask/0")
    assert wrong.status == 500
    worker = next(p for p in site[0].procs if p.role == "worker")
    assert "an App view returned a tuple of 4 items" in worker.wait_log("tuple of 4")
