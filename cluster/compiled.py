"""Which modules are compiled with mypyc, and whether this process runs them compiled.

`pip install .` compiles the modules in HOT_MODULES with mypyc when a C compiler is
there (see setup.py), and installs the same package as pure Python when not. They
were chosen by profile: what a request, a response and a broadcast spend their CPU
in (docs/performance.md, "The compiled build").

A process runs all of them compiled, or all of them from source, never a mix:
compiled modules call each other's functions in C, bypassing the module, so one
module run from source beside the compiled rest would not be called at all. It runs
the source when `CLUSTER_PURE_PYTHON=1` is set, and when a compiled module is older
than its source (a file edited since the last build; `make` rebuilds them), with one
line on stderr saying so. This module imports only the standard library: setup.py
reads it too.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

# The environment variable that asks for the pure-Python build, at install time (no
# compiling) and at run time (the source even when compiled modules are there).
PURE_PYTHON_ENV = "CLUSTER_PURE_PYTHON"

# What mypyc compiles; every module here must pass mypy --strict and must not be
# patched from outside (compiled classes and functions cannot be).
HOT_MODULES: tuple[str, ...] = (
    # the wire and the ZeroMQ pumps: every message, every process
    "cluster.plumbing.wire",
    "cluster.plumbing.response_parts",
    "cluster.plumbing.http_fields",
    "cluster.plumbing.zmqio",
    "cluster.plumbing.histogram",  # every response's latency, in both processes
    # the gateway's request path: bytes in, envelope out, envelope in, bytes out
    "cluster.gateway.http_core",
    "cluster.gateway.http_connection",
    "cluster.gateway.http_rules",
    "cluster.gateway.client_context",
    "cluster.gateway.framing",
    "cluster.gateway.exchange",
    "cluster.gateway.body_budget",
    "cluster.gateway.dispatch",
    # the WebSocket hub's fan-out and the frames and events it writes (the stream
    # base class is compiled because both protocol cores derive from it)
    "cluster.gateway.client_stream",
    "cluster.gateway.ws_core",
    "cluster.gateway.sse_core",
    "cluster.gateway.ws_session",
    "cluster.gateway.ws_groups",
    "cluster.gateway.ws_shards",
    "cluster.gateway.ws_hub",
    # the worker's request path: envelope in, handler, envelope out
    "cluster.worker.messages",
    "cluster.worker.runner",
    "cluster.worker.requests",
    "cluster.worker.adapters",
    "cluster.worker.threadpool",
    "cluster.worker.gateway_link",
    "cluster.worker.flow",
    "cluster.worker.compression",
    "cluster.worker.asgi",
    "cluster.worker.asgi_runner",
)

# Set by choose(): how this process runs the modules above, in words.
MODE = "not chosen yet"


# mypyc puts the compiled code of all of them in one library beside the package (the
# modules themselves are small shims into it); setup.py names it.
GROUP = "cluster_hot"


def source_path(module: str, root: Path) -> Path:
    return root.joinpath(*module.split(".")[1:]).with_suffix(".py")


def extension_path(stem: Path) -> Path | None:
    """The extension module built at `stem` (a path without suffix), if there is one."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.exists():
            return candidate
    return None


def compiled_path(module: str, root: Path) -> Path | None:
    return extension_path(source_path(module, root).with_suffix(""))


def group_library(root: Path) -> Path | None:
    return extension_path(root.parent / f"{GROUP}__mypyc")


def stale_modules(root: Path, modules: Sequence[str] = HOT_MODULES) -> list[str]:
    """In a source checkout (built in place), the modules whose source changed after
    the library was built; the shims are only rewritten when they change, so the
    library's time is the build's. An installed wheel is never stale: its files' times
    are the install's."""
    library = group_library(root)
    if library is None or not (root.parent / "setup.py").exists():
        return []
    built = library.stat().st_mtime
    return [m for m in modules if source_path(m, root).stat().st_mtime > built]


class SourceFirst(importlib.abc.MetaPathFinder):
    """Finds the hot modules' source files, ahead of their compiled twins."""

    def __init__(self, root: Path, modules: Sequence[str]) -> None:
        self.root = root
        self.modules = frozenset(modules)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(
            fullname, source_path(fullname, self.root))


def decide(root: Path, environ: Mapping[str, str]) -> tuple[bool, str, str]:
    """Whether the package at `root` runs compiled, that answer in words, and a line
    for stderr when the answer is not what was built."""
    built = [m for m in HOT_MODULES if compiled_path(m, root) is not None]
    if not built or group_library(root) is None:
        return False, "pure Python (not compiled)", ""
    if environ.get(PURE_PYTHON_ENV) == "1":
        return False, f"pure Python ({PURE_PYTHON_ENV}=1)", ""
    if len(built) < len(HOT_MODULES):
        missing = sorted(set(HOT_MODULES) - set(built))
        return False, "pure Python (build incomplete)", (
            f"cluster: {len(missing)} hot modules were not compiled ({missing[0]}, ...): "
            "running pure Python; reinstall to compile them")
    if stale := stale_modules(root):
        return False, "pure Python (compiled modules older than their source)", (
            f"cluster: {stale[0]} was edited after it was compiled: running pure Python; "
            "`make` (or `pip install -e .`) compiles it again")
    return True, "compiled with mypyc", ""


def choose(root: Path) -> str:
    """Decides, once per process and before any hot module is imported, whether this
    process runs them compiled; returns (and keeps in MODE) the answer in words."""
    global MODE
    compiled, MODE, warning = decide(root, os.environ)
    if warning:
        print(warning, file=sys.stderr)
    if not compiled:
        sys.meta_path.insert(0, SourceFirst(root, HOT_MODULES))
    return MODE


if __name__ == "cluster.compiled":  # imported by the package first; setup.py only reads it
    choose(Path(__file__).parent)
