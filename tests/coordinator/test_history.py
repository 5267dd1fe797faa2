"""Group history at the coordinator, without sockets: offsets, epochs, size and TTL."""

from __future__ import annotations

from cluster.coordinator.history import HistoryBook


def test_offsets_are_per_group_and_the_book_keeps_size_and_ttl() -> None:
    book = HistoryBook(size=3, ttl=10.0)
    assert [book.publish("a", i, 0.0) for i in range(5)] == [1, 2, 3, 4, 5]
    assert book.publish("b", "x", 0.0) == 1
    assert book.since("a", book.epoch, 2, 1.0) == ([[3, 2], [4, 3], [5, 4]], True)
    assert book.since("a", book.epoch, 1, 1.0) == ([], False)  # 2 is gone: too old
    assert book.since("a", book.epoch, 5, 1.0) == ([], True)  # up to date
    assert book.since("a", book.epoch, 9, 1.0) == ([], False)  # never given
    assert book.since("a", "other", 4, 1.0) == ([], False)  # another epoch
    assert book.since("new", book.epoch, 0, 1.0) == ([], True)
    assert book.since("a", book.epoch, 4, 20.0) == ([], False)  # expired
