"""Handler kinds behind one interface: `prepare(req)` -> an `Invocation` to run.

The worker's runtime does not care what kind of handler it runs: it asks the
adapter what to call, calls it (on the loop if it is a coroutine function, on the
thread pool if not, inline if it is a ready answer) and hands the result to
`finish`, which returns the response message.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.app import App


@dataclass(frozen=True, slots=True)
class Invocation:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    is_async: bool
    inline: bool = False  # a ready answer: no need to go to a thread
    finish: Callable[[Any], Any] | None = None


def _constant(msg: Any) -> Any:
    return msg


def ready(msg: Any) -> Invocation:
    return Invocation(_constant, (msg,), {}, False, inline=True)


class StateHolder:
    """The worker-local state dict; a handler may return a new one (seed Asynsrv)."""

    def __init__(self, initial: dict[str, Any]) -> None:
        self.state = initial


class FunctionHandler:
    """`fun(req, state) -> (msg, state)` or `-> msg`, sync or async."""

    kind = "function"

    def __init__(self, fn: Callable[..., Any], holder: StateHolder) -> None:
        self.fn = fn
        self.holder = holder
        self.is_async = inspect.iscoroutinefunction(fn)

    def prepare(self, req: dict[str, Any]) -> Invocation:
        return Invocation(self.fn, (req, self.holder.state), {}, self.is_async,
                          finish=self._finish)

    def _finish(self, result: Any) -> Any:
        if isinstance(result, tuple) and len(result) == 2:
            msg, new_state = result
            if isinstance(new_state, dict) and new_state is not self.holder.state:
                self.holder.state = new_state  # one rebinding: atomic under the GIL
            return msg
        return result


class AppHandler:
    kind = "app"

    def __init__(self, app: App) -> None:
        self.app = app
        self._async: dict[Callable[..., Any], bool] = {}

    def _is_async(self, view: Callable[..., Any]) -> bool:
        known = self._async.get(view)
        if known is None:
            known = self._async[view] = inspect.iscoroutinefunction(view)
        return known

    def prepare(self, req: dict[str, Any]) -> Invocation:
        match = self.app.match(req["method"], req["path"])
        if match.route is not None:
            req["params"] = match.params
            view = match.route.view
            return Invocation(view, (req,), match.params, self._is_async(view))
        if match.allowed:
            allow = ", ".join(sorted(match.allowed))
            return ready({"status": 405, "headers": {"allow": allow},
                          "body": "Method Not Allowed\n"})
        if self.app.not_found_view is not None:
            req["params"] = {}
            view = self.app.not_found_view
            return Invocation(view, (req,), {}, self._is_async(view))
        return ready({"status": 404, "body": "Not Found\n"})


Adapter = FunctionHandler | AppHandler
