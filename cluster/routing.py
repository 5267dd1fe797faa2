"""Route patterns like '/a/<b>/c' and '/item/<int:id>' compiled to regular expressions."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.errors import RouteError

# converter name -> (regex, conversion)
CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "str": (r"[^/]+", str),
    "int": (r"-?\d+", int),
    "float": (r"-?\d+(?:\.\d+)?", float),
    "path": (r".+", str),
}

_PARAM = re.compile(r"<(?:(?P<conv>[a-z]+):)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)>")



@dataclass(frozen=True)
class Route:
    pattern: str
    methods: frozenset[str]
    view: Callable[..., Any]
    regex: re.Pattern[str]
    converters: tuple[tuple[str, Callable[[str], Any]], ...]

    def match(self, path: str) -> dict[str, Any] | None:
        m = self.regex.fullmatch(path)
        if m is None:
            return None
        return {name: conv(m.group(name)) for name, conv in self.converters}


def compile_route(pattern: str, methods: list[str] | None, view: Callable[..., Any]) -> Route:
    if not pattern.startswith("/"):
        raise RouteError(f"route {pattern!r} must start with '/'")
    regex, pos = "", 0
    convs: list[tuple[str, Callable[[str], Any]]] = []
    for m in _PARAM.finditer(pattern):
        regex += re.escape(pattern[pos:m.start()])
        conv_name = m.group("conv") or "str"
        if conv_name not in CONVERTERS:
            raise RouteError(f"route {pattern!r}: unknown converter {conv_name!r}")
        name = m.group("name")
        if any(name == n for n, _ in convs):
            raise RouteError(f"route {pattern!r}: parameter {name!r} twice")
        part, conv = CONVERTERS[conv_name]
        regex += f"(?P<{name}>{part})"
        convs.append((name, conv))
        pos = m.end()
    regex += re.escape(pattern[pos:])
    allowed = frozenset(m.upper() for m in (methods or ["GET"]))
    if "GET" in allowed:
        allowed |= {"HEAD"}
    return Route(pattern, allowed, view, re.compile(regex), tuple(convs))


@dataclass(frozen=True)
class Match:
    route: Route | None  # None: no route; see `allowed`
    params: dict[str, Any]
    allowed: frozenset[str]  # when the path matched but not the method: for 405 Allow


def resolve(routes: list[Route], method: str, path: str) -> Match:
    allowed: set[str] = set()
    for route in routes:
        params = route.match(path)
        if params is None:
            continue
        if method in route.methods:
            return Match(route, params, route.methods)
        allowed |= route.methods
    return Match(None, {}, frozenset(allowed))
