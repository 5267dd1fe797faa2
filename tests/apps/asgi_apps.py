"""ASGI applications for the tests: a raw one (including its mistakes), Starlette, FastAPI."""

# No `from __future__ import annotations`: FastAPI reads the annotations of views
# and models defined inside a function, which only works when they are objects.
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from cluster import broadcast

Scope = dict[str, Any]

GONE: list[str] = []  # paths whose client went away (worker-local, one worker)


async def raw(scope: Scope, receive: Any, send: Any) -> None:
    """Plain ASGI 3, no framework: every message by hand."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["greeting"] = "started once"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await raw_websocket(scope, receive, send)
        return
    path = scope["path"]
    start = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"application/json")]}
    if path == "/echo":
        request = await receive()
        await send(start)
        await send({"type": "http.response.body", "body": json.dumps({
            "method": scope["method"], "path": path,
            "query": scope["query_string"].decode(), "body": request["body"].decode(),
            "more_body": request["more_body"], "state": scope["state"],
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            "client": scope["client"] is not None, "asgi": scope["asgi"]}).encode()})
    elif path == "/stream":
        await send({**start, "headers": [(b"content-type", b"text/plain")]})
        for i in range(3):
            await send({"type": "http.response.body", "body": f"part {i}\n".encode(),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/body-before-start":
        await send({"type": "http.response.body", "body": b"too early"})
    elif path == "/start-twice":
        await send(start)
        await send(start)
    elif path == "/no-response":
        return
    elif path == "/raise":
        raise RuntimeError("the app failed")
    elif path == "/wait-for-disconnect":
        await receive()  # the body
        message = await receive()  # blocks until the client goes away
        GONE.append(message["type"])
    elif path == "/gone":
        await send(start)
        await send({"type": "http.response.body", "body": json.dumps(GONE).encode()})
    elif path == "/huge":
        await send({**start, "headers": [(b"content-type", b"application/octet-stream")]})
        chunk = b"z" * 65536
        try:
            for _ in range(1024):  # 64 MiB
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError:  # ClientDisconnected: the client left mid-stream
            GONE.append("stream stopped early")
            raise
        await send({"type": "http.response.body", "body": b""})
    elif path == "/scheme":
        await send(start)
        await send({"type": "http.response.body", "body": json.dumps(scope["scheme"]).encode()})
    elif path == "/state":
        state = scope["extensions"]["cluster"]["state"]
        count = await state.aincr("asgi-hits", 1)
        await send(start)
        await send({"type": "http.response.body", "body": json.dumps(count).encode()})
    else:
        await send({**start, "status": 404})
        await send({"type": "http.response.body", "body": b"{}"})


async def raw_websocket(scope: Scope, receive: Any, send: Any) -> None:
    path = scope["path"]
    assert (await receive())["type"] == "websocket.connect"
    if path == "/ws-deny":
        await send({"type": "websocket.close"})
        return
    if path == "/ws-http":
        await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"who are you?"})
        return
    if path == "/ws-send-first":
        await send({"type": "websocket.send", "text": "not accepted yet"})
        return
    if path == "/ws-accept-twice":
        await send({"type": "websocket.accept"})
        await receive()
        await send({"type": "websocket.accept"})
        return
    subprotocol = "chat" if "chat" in scope["subprotocols"] else None
    await send({"type": "websocket.accept", "subprotocol": subprotocol,
                "headers": [(b"x-asgi", b"yes")]})
    conn = scope["extensions"]["cluster"]["conn"]
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text == "close":
            await send({"type": "websocket.close", "code": 4001, "reason": "asked to"})
            return
        if text == "who":
            await send({"type": "websocket.send", "text": conn})
        elif text == "scheme":
            await send({"type": "websocket.send", "text": scope["scheme"]})
        elif text is not None:
            await send({"type": "websocket.send", "text": f"echo {text}"})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})


# -- Starlette ---------------------------------------------------------------------

def _starlette() -> Any:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    done: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"db": "connected at startup"}

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"],
                             "q": request.query_params.get("q"),
                             "db": request.state.db})

    async def echo_json(request: Request) -> JSONResponse:
        data = await request.json()
        return JSONResponse({"got": data}, status_code=201)

    async def upload(request: Request) -> JSONResponse:
        form = await request.form()
        file = form["file"]
        content = await file.read()  # type: ignore[union-attr]
        return JSONResponse({"name": file.filename, "size": len(content),  # type: ignore[union-attr]
                             "field": form["note"]})

    async def stream(request: Request) -> StreamingResponse:
        async def numbers() -> AsyncIterator[bytes]:
            for i in range(5):
                await asyncio.sleep(0)
                yield f"{i}\n".encode()
        return StreamingResponse(numbers(), media_type="text/plain")

    async def background(request: Request) -> PlainTextResponse:
        return PlainTextResponse("queued", background=BackgroundTask(done.append, "ran"))

    async def background_done(request: Request) -> JSONResponse:
        return JSONResponse(done)

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            if text == "room":
                broadcast("starlette-room", "to the room")  # the cluster's push API
            await websocket.send_text(text.upper())

    return Starlette(lifespan=lifespan, routes=[
        Route("/items/{item_id:int}", item),
        Route("/json", echo_json, methods=["POST"]),
        Route("/upload", upload, methods=["POST"]),
        Route("/stream", stream),
        Route("/background", background),
        Route("/background-done", background_done),
        WebSocketRoute("/ws", ws),
    ])


# -- FastAPI -------------------------------------------------------------------------

def _fastapi() -> Any:
    from fastapi import BackgroundTasks, FastAPI, File, Form, UploadFile, WebSocket
    from fastapi.responses import StreamingResponse
    from pydantic import BaseModel

    done: list[str] = []
    started: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started["at"] = "startup"
        yield

    api = FastAPI(lifespan=lifespan)

    class Item(BaseModel):
        name: str
        price: float

    @api.get("/items/{item_id}")
    async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"id": item_id, "q": q, "lifespan": started.get("at")}

    @api.post("/items", status_code=201)
    async def create_item(item: Item) -> dict[str, Any]:
        return {"name": item.name, "price": item.price}

    @api.post("/upload")
    async def upload(file: Annotated[UploadFile, File()],
                     note: Annotated[str, Form()]) -> dict[str, Any]:
        content = await file.read()
        return {"name": file.filename, "size": len(content), "note": note}

    @api.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"chunk {i}\n".encode()
        return StreamingResponse(parts(), media_type="text/plain")

    @api.get("/background")
    async def background(tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(done.append, "ran")
        return {"status": "queued"}

    @api.get("/background-done")
    async def background_done() -> list[str]:
        return done

    @api.get("/sync")
    def sync_view() -> dict[str, str]:  # FastAPI runs this in its thread pool
        return {"sync": "ok"}

    @api.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol=None)
        while True:
            data = await websocket.receive_json()
            await websocket.send_json({"echo": data})

    return api


def __getattr__(name: str) -> Any:
    # Built on first use, so importing this module needs neither framework.
    if name == "starlette_app":
        return _starlette()
    if name == "fastapi_app":
        return _fastapi()
    raise AttributeError(name)
