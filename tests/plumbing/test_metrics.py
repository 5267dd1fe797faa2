from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest

from cluster.plumbing.histogram import ShardedHistogram, merge_rows
from cluster.plumbing.metrics import ReadAtScrape


def test_observations_land_in_the_first_bucket_at_or_above_them() -> None:
    h = ShardedHistogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(("GET", 200), value)
    [row] = h.rows().values()
    assert row[:-1] == [2, 2, 1]  # le=0.1 is inclusive; 7.0 is above every bound
    assert row[-1] == 0.05 + 0.1 + 0.5 + 1.0 + 7.0


def test_threads_count_apart_and_the_scrape_adds_them_up() -> None:
    h = ShardedHistogram((1.0,))

    def work() -> None:
        for _ in range(10_000):
            h.observe(("r",), 0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert h.rows()[("r",)][:-1] == [40_000, 0]  # not one observation lost


def test_exposition_is_cumulative_with_count_and_sum() -> None:
    h = ShardedHistogram((0.1, 1.0))
    h.observe(("/a", 200), 0.05)
    h.observe(("/a", 500), 0.5)
    h.observe(("/b", 200), 2.0)
    registry = CollectorRegistry()
    registry.register(ReadAtScrape(lambda: [h.family(
        "x_seconds", "doc", ["route"], merge_rows(h.rows(), lambda key: key[:1]))]))
    text = generate_latest(registry).decode()
    assert 'x_seconds_bucket{le="0.1",route="/a"} 1.0' in text
    assert 'x_seconds_bucket{le="1.0",route="/a"} 2.0' in text
    assert 'x_seconds_bucket{le="+Inf",route="/a"} 2.0' in text
    assert 'x_seconds_count{route="/a"} 2.0' in text
    assert 'x_seconds_bucket{le="1.0",route="/b"} 0.0' in text
    assert 'x_seconds_sum{route="/b"} 2.0' in text


def test_the_endpoint_closes_a_connection_that_sends_nothing() -> None:
    import asyncio

    from cluster.plumbing.metrics import MetricsServer

    async def go() -> bytes:
        server = MetricsServer({"/metrics": lambda: (b"x 1\n", "text/plain")},
                               idle_timeout=0.2)
        port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            data = await asyncio.wait_for(reader.read(), 5)  # EOF once it gives up
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"x 1\n")
            return data
        finally:
            server.close()

    assert asyncio.run(go()) == b""
