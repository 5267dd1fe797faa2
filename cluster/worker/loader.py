"""Load `--handler pkg.module:object` and wrap it in the adapter for its kind: an
App, a function `(req, state)`, or an ASGI 3 application `(scope, receive, send)`."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from cluster.app import App
from cluster.errors import HandlerLoadError
from cluster.state import Backend
from cluster.worker.adapters import Adapter, AppHandler, FunctionHandler
from cluster.worker.asgi import ASGIHandler, is_asgi_app


def import_object(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise HandlerLoadError(f"--handler {spec!r} must look like pkg.module:object")
    # Like uvicorn's --app-dir '.': a handler next to where the command runs is found.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerLoadError(f"cannot import {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise HandlerLoadError(f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def positional_count(fn: Any) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def load_handler(spec: str) -> App | Callable[..., Any]:
    """Import and check `spec`: an App, a `fun(req, state)` or an ASGI app;
    HandlerLoadError if not."""
    obj = import_object(spec)
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
            f"{spec} takes {count} positional arguments; a handler takes (req, state)")
    raise HandlerLoadError(f"{spec} is a {type(obj).__name__}, not an App or a function")


def make_adapter(handler: App | Callable[..., Any], backend: Backend
                 ) -> Adapter | ASGIHandler:
    if isinstance(handler, App):
        return AppHandler(handler, backend)
    if is_asgi_app(handler, positional_count(handler)):
        return ASGIHandler(handler, backend)
    return FunctionHandler(handler, backend)
