"""Static file planning, without sockets: which file, which status, which headers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.errors import ConfigError
from cluster.gateway.static import FilePlan, Mount, Refusal, etag_of, parse_mounts, plan


@pytest.fixture
def site(tmp_path: Path) -> list[Mount]:
    root = tmp_path / "public"
    (root / "docs").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"0123456789")
    (root / "docs" / "index.html").write_bytes(b"<p>hi</p>")
    (tmp_path / "secret").write_bytes(b"no")
    os.symlink(tmp_path / "secret", root / "out")
    return parse_mounts(f"/static={root}")


def test_a_file_is_planned_with_its_headers(site: list[Mount]) -> None:
    answer = plan(site, "GET", "/static/a.txt?v=1", [])
    assert isinstance(answer, FilePlan) and (answer.status, answer.offset, answer.length) == \
        (200, 0, 10)
    headers = dict(answer.headers)
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["content-length"] == "10" and headers["accept-ranges"] == "bytes"
    assert headers["etag"] == etag_of(answer.path.stat())


def test_a_directory_serves_its_index(site: list[Mount]) -> None:
    answer = plan(site, "HEAD", "/static/docs/", [])
    assert isinstance(answer, FilePlan) and answer.path.name == "index.html"


def test_paths_under_no_mount_are_the_workers(site: list[Mount]) -> None:
    assert plan(site, "GET", "/staticky", []) is None
    assert plan(site, "GET", "/api/x", []) is None


@pytest.mark.parametrize("target", ["/static/../secret", "/static/%2e%2e/secret",
                                    "/static/out", "/static/a.txt%00", "/static/..%5csecret",
                                    "/static/missing"])
def test_nothing_outside_the_directory_is_served(site: list[Mount], target: str) -> None:
    assert plan(site, "GET", target, []) == Refusal(404, [])


def test_other_methods_get_405(site: list[Mount]) -> None:
    assert plan(site, "POST", "/static/a.txt", []) == Refusal(405, [("allow", "GET, HEAD")])


def test_a_matching_etag_gets_304(site: list[Mount]) -> None:
    first = plan(site, "GET", "/static/a.txt", [])
    assert isinstance(first, FilePlan)
    etag = dict(first.headers)["etag"]
    answer = plan(site, "GET", "/static/a.txt", [("if-none-match", f'"x", W/{etag}')])
    assert isinstance(answer, Refusal) and answer.status == 304


@pytest.mark.parametrize(("value", "span"), [
    ("bytes=2-4", (2, 3)), ("bytes=7-", (7, 3)), ("bytes=-4", (6, 4)), ("bytes=5-100", (5, 5)),
])
def test_one_byte_range_gets_206(site: list[Mount], value: str, span: tuple[int, int]) -> None:
    answer = plan(site, "GET", "/static/a.txt", [("range", value)])
    assert isinstance(answer, FilePlan) and answer.status == 206
    assert (answer.offset, answer.length) == span
    end = span[0] + span[1] - 1
    assert dict(answer.headers)["content-range"] == f"bytes {span[0]}-{end}/10"


@pytest.mark.parametrize("value", ["bytes=0-1,3-4", "items=1-2", "bytes=4-2", "bytes=x-"])
def test_ranges_we_do_not_serve_get_the_whole_file(site: list[Mount], value: str) -> None:
    answer = plan(site, "GET", "/static/a.txt", [("range", value)])
    assert isinstance(answer, FilePlan) and answer.status == 200


def test_a_range_past_the_end_gets_416(site: list[Mount]) -> None:
    answer = plan(site, "GET", "/static/a.txt", [("range", "bytes=10-")])
    assert isinstance(answer, Refusal) and answer.status == 416
    assert dict(answer.headers)["content-range"] == "bytes */10"


def test_a_stale_if_range_gets_the_whole_file(site: list[Mount]) -> None:
    answer = plan(site, "GET", "/static/a.txt", [("range", "bytes=0-1"), ("if-range", '"old"')])
    assert isinstance(answer, FilePlan) and answer.status == 200


@pytest.mark.parametrize("spec", ["static=/tmp", "/s=", "/s=/nonexistent-dir-xyz"])
def test_bad_mounts_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_mounts(spec)


def test_the_longest_prefix_wins(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    mounts = parse_mounts(f"/s={tmp_path / 'a'},/s/deep={tmp_path / 'b'}")
    assert [m.prefix for m in mounts] == ["/s/deep", "/s"]


@pytest.mark.parametrize("target", ["/static/.env", "/static/.git/config",
                                    "/static/docs/.hidden", "/static/%2egit/config"])
def test_dotfiles_are_not_served(tmp_path: Path, target: str) -> None:
    root = tmp_path / "public"
    (root / ".git").mkdir(parents=True)
    (root / "docs").mkdir()
    for name in (".env", ".git/config", "docs/.hidden"):
        (root / name).write_bytes(b"secret")
    assert plan(parse_mounts(f"/static={root}"), "GET", target, []) == Refusal(404, [])
    allowed = plan(parse_mounts(f"/static={root}", dotfiles=True), "GET", target, [])
    assert isinstance(allowed, FilePlan)


def test_a_file_named_as_a_directory_is_404(site: list[Mount]) -> None:
    assert plan(site, "GET", "/static/a.txt/", []) == Refusal(404, [])
    assert plan(site, "GET", "/static/docs/index.html/", []) == Refusal(404, [])


def test_what_the_file_system_refuses_is_an_answer(
        tmp_path: Path, site: list[Mount], caplog: pytest.LogCaptureFixture) -> None:
    root = site[0].root
    os.symlink(root / "loop-b", root / "loop-a")
    os.symlink(root / "loop-a", root / "loop-b")
    with caplog.at_level("INFO", "cluster.gateway.static"):
        assert plan(site, "GET", "/static/" + "n" * 256, []) == Refusal(404, [])
        assert plan(site, "GET", "/static/loop-a", []) == Refusal(404, [])
    lines = [r for r in caplog.records if r.name == "cluster.gateway.static"]
    assert len(lines) == 2 and not any(r.exc_info for r in lines)
    assert "too long" in lines[0].getMessage()


def test_no_permission_is_403(site: list[Mount], monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads any file whatever its mode, so the file system's answer is stood in for.
    def refuse(self: Path, **_: object) -> os.stat_result:
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "stat", refuse)
    assert plan(site, "GET", "/static/a.txt", []) == Refusal(403, [])
