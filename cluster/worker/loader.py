"""Load `--handler pkg.module:object` and wrap it in the adapter for its kind: an
App, a function `(req, state)`, or an ASGI 3 application `(scope, receive, send)`."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from cluster.app import App
from cluster.errors import HandlerLoadError
from cluster.state import Backend
from cluster.worker.adapters import Adapter, AppHandler, FunctionHandler
from cluster.worker.asgi import ASGIHandler, is_asgi_app


def import_object(spec: str, app_dir: str = ".") -> Any:
    """`pkg.module:object`, imported with `app_dir` first on the import path (as
    uvicorn's --app-dir; "." is where the command runs). Whatever goes wrong is a
    HandlerLoadError of one line that names the user's file and line."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise HandlerLoadError(f"--handler {spec!r} must look like pkg.module:object")
    where = os.path.abspath(app_dir)
    if not os.path.isdir(where):
        raise HandlerLoadError(f"--app-dir {app_dir!r}: no such directory")
    if where in sys.path:
        sys.path.remove(where)
    sys.path.insert(0, where)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise HandlerLoadError(
                f"cannot import {module_name!r}: no {exc.name.replace('.', '/')}.py or "
                f"package {exc.name!r} in {where} (--app-dir) or the installed packages; "
                "run from the directory that holds it, or give --app-dir DIR") from None
        raise HandlerLoadError(f"importing {module_name!r}: {_where(exc)}") from None
    except Exception as exc:  # the user's module failed as it ran: say where, in one line
        raise HandlerLoadError(f"importing {module_name!r}: {_where(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise HandlerLoadError(f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def _where(exc: Exception) -> str:
    """`FILE:LINE: Kind: message` for an exception raised while a module ran: the
    innermost frame outside the import machinery, or a SyntaxError's own place."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}: SyntaxError: {exc.msg}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "importlib" not in f.filename and f.filename != __file__]
    place = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
    return f"{place}{type(exc).__name__}: {exc}"


def positional_count(fn: Any) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def load_handler(spec: str, app_dir: str = ".") -> App | Callable[..., Any]:
    """Import and check `spec`: an App, a `fun(req, state)` or an ASGI app;
    HandlerLoadError if not."""
    obj = import_object(spec, app_dir)
    if isinstance(obj, App):
        return obj
    if callable(obj):
        count = positional_count(obj)
        if count == 2:
            return obj  # type: ignore[no-any-return]
        if is_asgi_app(obj, count):
            return obj  # type: ignore[no-any-return]
        if count == 3:
            raise HandlerLoadError(
                f"{spec} takes 3 arguments but is not a coroutine function: an ASGI 3 "
                "application is async def app(scope, receive, send)")
        raise HandlerLoadError(
            f"{spec} takes {count} positional argument{'' if count == 1 else 's'}; a "
            "handler takes (req, state)")
    raise HandlerLoadError(f"{spec} is {_a(type(obj).__name__)}, not an App or a function")


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def make_adapter(handler: App | Callable[..., Any], backend: Backend
                 ) -> Adapter | ASGIHandler:
    if isinstance(handler, App):
        return AppHandler(handler, backend)
    if is_asgi_app(handler, positional_count(handler)):
        return ASGIHandler(handler, backend)
    return FunctionHandler(handler, backend)
