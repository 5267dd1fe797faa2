"""Stream flow control in a worker: a producer waits once WINDOW bytes are unacknowledged,
and goes on with credit or when the client is gone; `pace` gives up after a stall."""

from __future__ import annotations

import asyncio

from cluster.worker.flow import WINDOW, Streams, StreamWindow


def test_a_window_blocks_past_its_size_and_credit_opens_it() -> None:
    window = StreamWindow()
    window.sent(WINDOW)
    assert not window.blocked()
    window.sent(1)
    assert window.blocked()
    window.credit(1)
    assert not window.blocked()


def test_an_async_producer_waits_for_credit() -> None:
    async def go() -> None:
        window = StreamWindow()
        window.sent(WINDOW + 10)
        waiter = asyncio.create_task(window.wait())
        await asyncio.sleep(0)  # one loop pass: the waiter runs up to its wait
        assert not waiter.done()
        window.credit(5)  # still over the window
        await asyncio.sleep(0)  # one pass: the waiter woke, saw it still blocked, waits again
        assert not waiter.done()
        window.credit(5)
        await asyncio.wait_for(waiter, 1)

    asyncio.run(go())


def test_pace_waits_for_credit_and_cuts_a_stalled_stream() -> None:
    async def go() -> None:
        window = StreamWindow()
        window.sent(WINDOW + 1)
        waiter = asyncio.create_task(window.pace(5))
        await asyncio.sleep(0)  # one loop pass: the waiter runs up to its wait
        window.credit(1)
        assert await asyncio.wait_for(waiter, 5) is True and not window.gone
        window.sent(2)
        # The timeout is what this line tests: nothing credits the window.
        assert await window.pace(0.01) is False
        assert window.gone

    asyncio.run(go())


def test_a_gone_client_releases_every_waiter() -> None:
    async def go() -> None:
        window = StreamWindow()
        window.sent(WINDOW * 3)
        waiter = asyncio.create_task(window.wait())
        await asyncio.sleep(0)  # one loop pass: the waiter runs up to its wait
        window.client_gone()
        await asyncio.wait_for(waiter, 1)
        assert await window.pace(0) is True and window.gone

    asyncio.run(go())


def test_streams_route_credit_and_gone_by_gateway_and_request() -> None:
    streams = Streams()
    a, b = streams.open("gw-1", 7), streams.open("gw-2", 7)
    a.sent(WINDOW + 1)
    b.sent(WINDOW + 1)
    streams.credit("gw-1", 7, 1)
    streams.client_gone("gw-2", 7)
    assert not a.blocked() and b.gone and not a.gone
    streams.close("gw-1", 7)
    streams.credit("gw-1", 7, 100)  # a late credit for a closed stream: ignored
    assert a.unacked == WINDOW and list(streams.windows) == [("gw-2", 7)]
