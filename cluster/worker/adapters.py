"""Handler kinds behind one interface: `prepare(req)` -> an `Invocation` to run.

The worker's runtime does not care what kind of handler it runs: it asks the
adapter what to call, calls it (on the loop if it is a coroutine function, on the
thread pool if not, inline if it is a ready answer), passes the result through
`finish` (which returns the response message) and then commits the writes buffered
in the call's `state` view before it answers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.app import App
from cluster.errors import BadResponse
from cluster.state import Backend, SharedState


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 1 µs a request
class Invocation:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    is_async: bool
    inline: bool = False  # a ready answer: no need to go to a thread
    finish: Callable[[Any, SharedState], Any] | None = None
    state: SharedState | None = None  # this call's view; its writes commit on return
    route: str = "*"  # the route pattern that matched, for metrics ("*": a function)


def settle(inv: Invocation, result: Any) -> tuple[Any, list[list[Any]]]:
    """What the handler answered, and the state writes its call buffered (to commit
    before that answer goes out)."""
    if inv.state is None:
        return result, []
    msg = inv.finish(result, inv.state) if inv.finish is not None else result
    return msg, inv.state.take_batch()


# Route labels for requests no route matched (a bounded set: never the raw path).
NO_ROUTE = "(not found)"
NO_METHOD = "(method not allowed)"


def _constant(msg: Any) -> Any:
    return msg


def ready(msg: Any, route: str) -> Invocation:
    return Invocation(_constant, (msg,), {}, False, inline=True, route=route)


def split_state(result: Any, view: SharedState) -> Any:
    """`(msg, state)` as the seed returns it: a new dict's differences become writes."""
    if isinstance(result, tuple) and len(result) == 2:
        msg, new_state = result
        if isinstance(new_state, dict) and new_state is not view:
            view.absorb(new_state)
        return msg
    return result


def view_answer(result: Any, _view: SharedState) -> Any:
    """What an App view returned, with Flask's tuples: `(body, status)` and
    `(body, status, headers)` become the response dict; another tuple is an error
    that says what to return (a JSON array is a list, not a tuple)."""
    if not isinstance(result, tuple):
        return result
    if len(result) in (2, 3) and isinstance(result[1], int) and \
            not isinstance(result[1], bool):
        msg: dict[str, Any] = {"status": result[1], "body": result[0]}
        if len(result) == 3:
            msg["headers"] = result[2]
        return msg
    raise BadResponse(f"an App view returned a tuple of {len(result)} item"
                      f"{'s' * (len(result) != 1)}; return (body, status), (body, status, "
                      "headers), a dict with status/headers/body, or the body itself "
                      "(a list for a JSON array)")


class FunctionHandler:
    """`fun(req, state) -> (msg, state)` or `-> msg`, sync or async."""

    kind = "function"

    def __init__(self, fn: Callable[..., Any], backend: Backend) -> None:
        self.fn = fn
        self.backend = backend
        self.is_async = inspect.iscoroutinefunction(fn)

    def prepare(self, req: dict[str, Any]) -> Invocation:
        view = SharedState(self.backend)
        return Invocation(self.fn, (req, view), {}, self.is_async, finish=split_state,
                          state=view)

    def prepare_ws(self, req: dict[str, Any]) -> Invocation:
        """The same function gets WebSocket events; `req['type']` tells them apart."""
        return self.prepare(req)


class AppHandler:
    kind = "app"

    def __init__(self, app: App, backend: Backend) -> None:
        self.app = app
        self.backend = backend
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
            req["state"] = state = SharedState(self.backend)
            view = match.route.view
            return Invocation(view, (req,), match.params, self._is_async(view),
                              finish=view_answer, state=state, route=match.route.pattern)
        if match.allowed:
            allow = ", ".join(sorted(match.allowed))
            return ready({"status": 405, "headers": {"allow": allow},
                          "body": "Method Not Allowed\n"}, NO_METHOD)
        if self.app.not_found_view is not None:
            req["params"] = {}
            req["state"] = state = SharedState(self.backend)
            view = self.app.not_found_view
            return Invocation(view, (req,), {}, self._is_async(view), finish=view_answer,
                              state=state, route=NO_ROUTE)
        return ready({"status": 404, "body": "Not Found\n"}, NO_ROUTE)

    def prepare_ws(self, req: dict[str, Any]) -> Invocation:
        match = self.app.match_ws(req["path"])
        if match.route is None:
            return ready({"status": 404}, NO_ROUTE)  # refuses a connect; later: nothing
        req["params"] = match.params
        req["state"] = state = SharedState(self.backend)
        view = match.route.view
        return Invocation(view, (req,), match.params, self._is_async(view), state=state,
                          route=match.route.pattern)


Adapter = FunctionHandler | AppHandler
