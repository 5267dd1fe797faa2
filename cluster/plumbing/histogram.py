"""Latency histograms as every request records them: per thread, merged when scraped.

Compiled with mypyc (cluster/compiled.py): the gateway records each response here,
the worker each handler call, so an observation costs about what a counter does.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client.core import HistogramMetricFamily


class ShardedHistogram:
    """Observations by label key, counted per thread and merged when scraped.

    prometheus-client's Histogram takes a lock per bucket and walks the buckets in
    Python: measured, it cost the worker and gateway 15% of their request rate.
    Here each thread owns its shard (no lock: only its owner writes it), an
    observation is a C bisect and two list updates, and a scrape adds the shards.
    Each key's row is [count per bucket..., count above the last bucket, sum]."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = list(buckets)
        self._local = threading.local()
        self._shards: list[dict[tuple[Any, ...], list[float]]] = []
        self._lock = threading.Lock()  # only for adding a thread's shard

    def shard(self) -> dict[tuple[Any, ...], list[float]]:
        """The calling thread's rows (a single-threaded caller may keep it)."""
        try:
            shard: dict[tuple[Any, ...], list[float]] = self._local.shard
        except AttributeError:
            shard = self._local.shard = {}
            with self._lock:
                self._shards.append(shard)
        return shard

    def observe(self, key: tuple[Any, ...], value: float) -> None:
        try:
            shard = self._local.shard
        except AttributeError:  # this thread's first observation
            shard = self.shard()
        self.observe_in(shard, key, value)

    def observe_in(self, shard: dict[tuple[Any, ...], list[float]], key: tuple[Any, ...],
                   value: float) -> None:
        row = shard.get(key)
        if row is None:
            row = shard[key] = [0.0] * (len(self.bounds) + 2)
        row[bisect.bisect_left(self.bounds, value)] += 1
        row[-1] += value

    def rows(self) -> dict[tuple[Any, ...], list[float]]:
        """Every key's row, summed over the threads."""
        with self._lock:
            shards = list(self._shards)
        merged: dict[tuple[Any, ...], list[float]] = {}
        for shard in shards:
            for key, row in list(shard.items()):  # a copy: its owner may add a key
                _add_row(merged, key, row)
        return merged

    def family(self, name: str, doc: str, labels: list[str],
               rows: dict[tuple[Any, ...], list[float]]) -> HistogramMetricFamily:
        """A histogram family of `rows` (already merged to `labels`' keys)."""
        family = HistogramMetricFamily(name, doc, labels=labels)
        for key, row in sorted(rows.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip([*self.bounds, float("inf")], row[:-1], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(float(bound)),
                                cumulative))
            family.add_metric(list(key), buckets, sum_value=row[-1])
        return family


def merge_rows(rows: dict[tuple[Any, ...], list[float]],
               keep: Callable[[tuple[Any, ...]], tuple[Any, ...]]
               ) -> dict[tuple[Any, ...], list[float]]:
    """Rows re-keyed by `keep(key)`, summed: a histogram over fewer labels."""
    out: dict[tuple[Any, ...], list[float]] = {}
    for key, row in rows.items():
        _add_row(out, keep(key), row)
    return out


def _add_row(into: dict[tuple[Any, ...], list[float]], key: tuple[Any, ...],
             row: list[float]) -> None:
    total = into.get(key)
    if total is None:
        into[key] = list(row)
    else:
        for i, value in enumerate(row):
            total[i] += value
