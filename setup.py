"""Compiles the hot modules with mypyc when it can; everything else is in pyproject.toml.

The modules are listed in cluster/compiled.py, which also decides at run time whether
a process uses them. `CLUSTER_PURE_PYTHON=1 pip install .` skips compiling; so does a
machine without a C compiler or Python's headers, with one warning: the package is
the same, only slower.
"""

from __future__ import annotations

import os
import runpy
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
COMPILED = runpy.run_path(str(HERE / "cluster" / "compiled.py"))


# Set by `make`: with a C compiler at hand, a module mypyc refuses or C that does not
# compile is an error to fix, not a reason to install pure Python unnoticed.
STRICT = os.environ.get("CLUSTER_STRICT_BUILD") == "1"


def warn(why: str) -> None:
    print(f"cluster: not compiling the hot modules ({why}); installing pure Python",
          file=sys.stderr)


def extensions() -> list[Any]:
    if os.environ.get(COMPILED["PURE_PYTHON_ENV"]) == "1":
        return []
    compiler = sysconfig.get_config_var("CC") or "cc"
    if not shutil.which(os.environ.get("CC", compiler).split()[0]):
        warn("no C compiler")
        return []
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        warn("no Python.h: install the python3-dev package")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        warn("mypyc is not installed")
        return []
    sources = [str(COMPILED["source_path"](module, Path("cluster")))
               for module in COMPILED["HOT_MODULES"]]
    # One shared library for all of them (named by group_name), so calls between them
    # are C calls; opt_level 3 is mypyc's default, written down.
    try:
        result: list[Any] = mypycify(sources, opt_level="3", group_name=COMPILED["GROUP"])
    except SystemExit:  # mypyc's way to report a module it cannot compile, printed above
        if STRICT:
            raise
        warn("mypyc refused a module")
        return []
    return result


class OptionalBuildExt(build_ext):
    """A failed compile leaves no half-built set behind: the package runs as pure
    Python (cluster/compiled.py refuses an incomplete set anyway)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # the compiler's failure, whatever its kind
            if STRICT:
                raise
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            warn(f"the C compiler failed: {exc}")


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
