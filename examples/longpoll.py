"""Long-polling with deferred replies (seed Homor's suspended requests).

    cluster run --handler examples.longpoll:app --workers 2
    curl http://127.0.0.1:8000/poll/news          # waits...
    curl -X POST -d 'hello' http://127.0.0.1:8000/send/news   # ...and it answers

A poll returns DEFER: no worker is held while it waits. Its request id is noted in
the shared state, so a send on any worker finds every waiter and answers it with
`reply`. A poll nobody answers gets 504 after the gateway's --defer-timeout.
"""

from typing import Any

from cluster import DEFER, App, reply

app = App()


@app.route("/poll/<topic>")
def poll(req: dict[str, Any], topic: str) -> Any:
    req["state"][f"waiting:{topic}:{req['id']}"] = 1  # committed before DEFER is sent
    return DEFER


@app.route("/send/<topic>", methods=["POST"])
def send(req: dict[str, Any], topic: str) -> dict[str, Any]:
    state = req["state"]
    prefix = f"waiting:{topic}:"
    answered = 0
    for key in [k for k in state if k.startswith(prefix)]:
        if state.delete(key):  # atomic: exactly one sender answers each waiter
            reply(key[len(prefix):], {"status": 200, "body": req["body"]})
            answered += 1
    return {"status": 200, "body": {"answered": answered}}
