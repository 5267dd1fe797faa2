"""One exception tree: every exception class in the package is a ClusterError, and
every public one is defined in cluster.errors and drawn in its docstring."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import cluster
from cluster import errors
from cluster.errors import ClusterError

# Every module but __main__ (importing it runs the command line).
MODULES = [m.name for m in pkgutil.walk_packages(cluster.__path__, "cluster.")
           if not m.name.endswith("__main__")]


def exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("cluster"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_of_ours_is_a_cluster_error() -> None:
    classes = exception_classes()
    assert len(classes) > 15
    strays = [name for name, cls in classes.items() if not issubclass(cls, ClusterError)]
    assert strays == []


def test_every_public_exception_is_defined_and_drawn_in_errors() -> None:
    for name, cls in exception_classes().items():
        if not cls.__name__.startswith("_"):
            assert cls.__module__ == "cluster.errors", name
            assert cls.__name__ in (errors.__doc__ or ""), f"{name} is not in the tree"
