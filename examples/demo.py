"""Every example in one App: what docker-compose.yml runs and locust loads.

    cluster run --handler examples.demo:app --gateways 2

    /                    the chat page (examples.chat); WebSocket /chat/<room>
    /hello               plain text
    /routes/...          examples.routes (typed parameters, methods, streaming)
    /counter, /map/...   examples.counter (shared state across workers)
"""

from typing import Any

from cluster import App
from examples import chat, counter, routes

app = App()
app.include(chat.app)
app.include(counter.app)
app.include(routes.app, prefix="/routes")


@app.route("/hello")
def hello(req: dict[str, Any]) -> str:
    return "hello\n"
