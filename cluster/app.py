"""`App`: route decorators over the cluster's request dictionaries (seed Homor).

    app = App()

    @app.route('/item/<int:id>', methods=['GET', 'PUT'])
    def item(req, id):
        return {'status': 200, 'body': {'id': id}}

A view takes the request dict (with `params` added) and its path parameters as
keyword arguments; it may be sync or async. It returns a response dict
(`status`, `headers`, `body`), or just a body: str, bytes, or anything JSON-able.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from cluster.routing import Match, Route, compile_route, resolve
from cluster.rpc import Allow, GroupMethods, RpcEndpoint, public_methods

V = TypeVar("V", bound=Callable[..., Any])


class App:
    def __init__(self) -> None:
        self.routes: list[Route] = []
        self.ws_routes: list[Route] = []
        self.not_found_view: Callable[..., Any] | None = None
        self.rpc_endpoints: dict[str, RpcEndpoint] = {}  # WebSocket path -> its methods

    def route(self, pattern: str, methods: list[str] | None = None) -> Callable[[V], V]:
        def register(view: V) -> V:
            self.routes.append(compile_route(pattern, methods, view))
            return view
        return register

    def websocket(self, pattern: str) -> Callable[[V], V]:
        """A view for every event of WebSocket connections to `pattern`: it gets
        `req['type']` ws.connect, ws.message or ws.close, and the path parameters."""
        def register(view: V) -> V:
            self.ws_routes.append(compile_route(pattern, ["GET"], view))
            return view
        return register

    def rpc(self, name: str, path: str = "/rpc") -> Callable[[V], V]:
        """A WebSocket RPC method `module.method` for clients connected to `path`
        (see cluster.rpc): `fn(req, **data)`, sync or async, returns the result."""
        def register(view: V) -> V:
            self._rpc_endpoint(path).add(name, view)
            return view
        return register

    def rpc_handler(self, module: str, handler: object, path: str = "/rpc") -> None:
        """Every public method of `handler` as `module.<method>` (a handler class)."""
        endpoint = self._rpc_endpoint(path)
        for method, fn in public_methods(handler).items():
            endpoint.add(f"{module}.{method}", fn)

    def rpc_closed(self, path: str = "/rpc") -> Callable[[V], V]:
        """`fn(req)`, sync or async, called with the ws.close event of every connection
        to the RPC endpoint `path` that ends (to forget what it left behind)."""
        def register(view: V) -> V:
            self._rpc_endpoint(path).on_close.append(view)
            return view
        return register

    def groups(self, allow: Allow, path: str = "/rpc") -> None:
        """Let clients on `path` subscribe themselves to groups, with recovery, and ask
        who is in them (cluster.subscribe, cluster.unsubscribe, cluster.presence: what
        the clients in docs/clients.md call). `allow(req, group)`, sync or async,
        decides each time: True lets the connection in, anything else is "forbidden"."""
        methods = GroupMethods(allow)
        endpoint = self._rpc_endpoint(path)
        for name in ("subscribe", "unsubscribe", "presence"):
            endpoint.add(f"{GroupMethods.MODULE}.{name}", getattr(methods, name))

    def _rpc_endpoint(self, path: str) -> RpcEndpoint:
        endpoint = self.rpc_endpoints.get(path)
        if endpoint is None:
            endpoint = self.rpc_endpoints[path] = RpcEndpoint(path)
            self.websocket(path)(endpoint.view)
        return endpoint

    def include(self, other: App, prefix: str = "") -> None:
        """Serve `other`'s HTTP and WebSocket routes here too, under `prefix` (which
        starts with '/' and does not end with one); its not-found view is not taken."""
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(f"prefix {prefix!r} must start with '/' and not end with one")
        for r in other.routes:
            self.routes.append(compile_route(prefix + r.pattern, sorted(r.methods), r.view))
        for r in other.ws_routes:
            self.ws_routes.append(compile_route(prefix + r.pattern, ["GET"], r.view))

    def match_ws(self, path: str) -> Match:
        return resolve(self.ws_routes, "GET", path)

    def not_found(self, view: V) -> V:
        """Register the view that answers when no route matches (default: plain 404)."""
        self.not_found_view = view
        return view

    def match(self, method: str, path: str) -> Match:
        return resolve(self.routes, method, path)

    def route_map(self) -> list[tuple[str, str, str]]:
        """(methods, pattern, view name) for every route, in matching order."""
        rows = []
        for r in self.routes + self.ws_routes:
            name = f"{getattr(r.view, '__module__', '?')}.{getattr(r.view, '__qualname__', '?')}"
            methods = "WS" if r in self.ws_routes else ",".join(sorted(r.methods))
            rows.append((methods, r.pattern, name))
        return rows
