"""CollectorCalm: the objects of accumulated connections leave the collector's sight, in a
few steps as they grow, and only then."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gochat.gcfreeze import FLOOR, CollectorCalm


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Whatever a test freezes goes back under the collector's eye afterwards."""
    try:
        yield
    finally:
        gc.unfreeze()


def test_it_freezes_as_connections_grow_by_a_tenth(unfrozen: None) -> None:
    count = 0
    calm = CollectorCalm(lambda: count)
    held = [[object()] for _ in range(100)]  # tracked, long-lived: what a connection holds
    for n, froze in [
        (10, False),  # a small node: a full collection is short anyway
        (FLOOR - 1, False),
        (FLOOR, True),
        (FLOOR + 50, False),  # under a tenth more
        (FLOOR + 100, True),
        (FLOOR + 150, False),
        (FLOOR // 2, False),  # many left: counted from here again
        (FLOOR, True),  # and back up: its new objects are frozen too
    ]:
        count = n
        held.append([object()])  # a new connection's objects, since the last step
        before = gc.get_freeze_count()
        assert calm.check() is froze, n
        assert (gc.get_freeze_count() > before) is froze, n
    assert calm.freezes == 3
    assert all(gc.is_tracked(h) for h in held)


def test_a_frozen_object_is_still_freed_by_its_last_reference(unfrozen: None) -> None:
    import weakref

    class Conn:
        pass

    conn = Conn()
    gone = weakref.ref(conn)
    calm = CollectorCalm(lambda: FLOOR)
    assert calm.check()
    del conn
    assert gone() is None  # reference counting does not look at generations
