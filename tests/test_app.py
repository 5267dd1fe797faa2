from __future__ import annotations

from typing import Any

import pytest

from cluster import App
from cluster.errors import RouteError
from cluster.routing import compile_route
from cluster.worker.adapters import AppHandler
from tests.store_backend import StoreBackend


def view(req: dict[str, Any], **kw: Any) -> Any:
    return kw


def test_typed_parameters() -> None:
    route = compile_route("/a/<b>/c/<int:n>/<float:f>/<path:rest>", None, view)
    assert route.match("/a/x/c/-3/1.5/d/e") == {"b": "x", "n": -3, "f": 1.5, "rest": "d/e"}
    assert route.match("/a/x/c/nope/1.5/d") is None
    assert route.match("/a/x/y/c/1/1/d") is None  # str stops at '/'


def test_literal_parts_are_escaped() -> None:
    route = compile_route("/v1.0/<x>", None, view)
    assert route.match("/v1.0/a") == {"x": "a"} and route.match("/v100/a") is None


@pytest.mark.parametrize("pattern", ["nope", "/<bad:x>", "/<x>/<x>"])
def test_bad_patterns_fail_at_import(pattern: str) -> None:
    with pytest.raises(RouteError):
        compile_route(pattern, None, view)


def test_get_implies_head() -> None:
    assert compile_route("/", ["get"], view).methods == {"GET", "HEAD"}
    assert compile_route("/", ["POST"], view).methods == {"POST"}


def make_app() -> App:
    app = App()

    @app.route("/items/<int:id>", methods=["GET", "PUT"])
    def item(req: dict[str, Any], id: int) -> Any:
        return id

    @app.route("/items/<int:id>", methods=["DELETE"])
    def delete(req: dict[str, Any], id: int) -> Any:
        return -id

    return app


def req(method: str, path: str) -> dict[str, Any]:
    return {"method": method, "path": path}


def test_app_dispatch_405_and_404() -> None:
    handler = AppHandler(make_app(), StoreBackend())
    inv = handler.prepare(req("PUT", "/items/4"))
    assert inv.kwargs == {"id": 4} and not inv.inline
    assert handler.prepare(req("DELETE", "/items/4")).fn(*inv.args, id=4) == -4
    inv = handler.prepare(req("POST", "/items/4"))
    msg = inv.fn(*inv.args)
    assert inv.inline and msg["status"] == 405
    assert msg["headers"]["allow"] == "DELETE, GET, HEAD, PUT"
    inv = handler.prepare(req("GET", "/other"))
    assert inv.fn(*inv.args)["status"] == 404


def test_custom_not_found_and_route_map() -> None:
    app = make_app()

    @app.not_found
    def missing(req: dict[str, Any]) -> str:
        return "custom"

    inv = AppHandler(app, StoreBackend()).prepare(req("GET", "/zzz"))
    assert inv.fn(*inv.args) == "custom"
    rows = app.route_map()
    assert rows[0][:2] == ("GET,HEAD,PUT", "/items/<int:id>")
    assert rows[1][2].endswith("make_app.<locals>.delete")


def test_include_serves_another_apps_routes_under_a_prefix() -> None:
    inner = App()

    @inner.route("/items/<int:n>", methods=["PUT"])
    def put_item(req: dict[str, Any], n: int) -> str:
        return "ok"

    @inner.websocket("/live")
    def live(req: dict[str, Any]) -> None:
        return None

    outer = App()
    outer.include(inner, prefix="/api")
    match = outer.match("PUT", "/api/items/3")
    assert match.route is not None and match.route.view is put_item
    assert match.params == {"n": 3}
    assert outer.match("GET", "/api/items/3").allowed == {"PUT"}
    assert outer.match("PUT", "/items/3").route is None
    assert outer.match_ws("/api/live").route is not None
    with pytest.raises(ValueError):
        outer.include(inner, prefix="api/")


def test_rpc_names_are_module_dot_method_and_unique() -> None:
    app = App()
    app.rpc("a.b")(view)
    with pytest.raises(ValueError):
        app.rpc("a.b")(view)  # twice on one path
    app.rpc("a.b", path="/other")(view)  # another path is another namespace
    with pytest.raises(ValueError):
        app.rpc("nodot")(view)
    assert sorted(app.rpc_endpoints) == ["/other", "/rpc"]
    assert app.match_ws("/rpc").route is not None
