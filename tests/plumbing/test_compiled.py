"""Whether a process runs the hot modules compiled: decided from the files alone."""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path

from cluster import compiled
from cluster.compiled import HOT_MODULES, PURE_PYTHON_ENV, SourceFirst, decide

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def checkout(tmp_path: Path, *, built: tuple[str, ...] = HOT_MODULES, library: bool = True,
             source_tree: bool = True) -> Path:
    """A package laid out as a checkout built in place (or an installed wheel)."""
    root = tmp_path / "cluster"
    for module in HOT_MODULES:
        source = compiled.source_path(module, root)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("# source\n")
        os.utime(source, (1_000, 1_000))
    for module in built:
        shim = compiled.source_path(module, root).with_suffix("")
        shim.with_name(shim.name + SUFFIX).write_bytes(b"")
    if library:
        (tmp_path / f"{compiled.GROUP}__mypyc{SUFFIX}").write_bytes(b"")
    if source_tree:
        (tmp_path / "setup.py").write_text("")
    return root


def test_not_built_runs_pure_python_without_a_word(tmp_path: Path) -> None:
    root = checkout(tmp_path, built=(), library=False)
    assert decide(root, {}) == (False, "pure Python (not compiled)", "")


def test_built_runs_compiled(tmp_path: Path) -> None:
    assert decide(checkout(tmp_path), {}) == (True, "compiled with mypyc", "")


def test_the_environment_asks_for_pure_python(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    assert decide(root, {PURE_PYTHON_ENV: "1"}) == (
        False, "pure Python (CLUSTER_PURE_PYTHON=1)", "")
    assert decide(root, {PURE_PYTHON_ENV: "0"})[0] is True


def test_an_incomplete_build_is_never_mixed_with_source(tmp_path: Path) -> None:
    root = checkout(tmp_path, built=HOT_MODULES[1:])
    ok, mode, warning = decide(root, {})
    assert not ok and mode == "pure Python (build incomplete)"
    assert f"({HOT_MODULES[0]}, ...)" in warning
    ok, mode, _ = decide(checkout(tmp_path / "nolib", library=False), {})
    assert not ok and mode == "pure Python (not compiled)"


def test_a_source_edited_after_the_build_runs_from_source(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    edited = compiled.source_path("cluster.gateway.http_core", root)
    edited.write_text("# edited\n")  # now, after the library's time
    library = tmp_path / f"{compiled.GROUP}__mypyc{SUFFIX}"
    os.utime(library, (2_000, 2_000))
    ok, mode, warning = decide(root, {})
    assert not ok and mode == "pure Python (compiled modules older than their source)"
    assert warning.startswith("cluster: cluster.gateway.http_core was edited after")


def test_an_installed_wheel_is_never_stale(tmp_path: Path) -> None:
    root = checkout(tmp_path, source_tree=False)
    os.utime(tmp_path / f"{compiled.GROUP}__mypyc{SUFFIX}", (1, 1))  # older than sources
    assert decide(root, {})[0] is True


def test_source_first_finds_only_the_hot_modules_source(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    finder = SourceFirst(root, HOT_MODULES)
    spec = finder.find_spec("cluster.plumbing.wire", None)
    assert spec is not None and spec.origin == str(root / "plumbing" / "wire.py")
    assert isinstance(spec.loader, importlib.machinery.SourceFileLoader)
    assert finder.find_spec("cluster.plumbing.config", None) is None
