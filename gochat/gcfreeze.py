"""Keep Python's full garbage collections short while connections accumulate.

Every connection is some hundred objects the cyclic collector tracks, and a full collection
walks all of them, during which the process does nothing else: 0.8 s at 19,000 idle
connections (docs/performance.md, S8), a pause every chat sent meanwhile waits out, and
most of an idle node's CPU. Those objects live as long as their connection; walking them
again and again finds nothing. So, every `period` seconds, once the connections have
grown by a tenth since the last time (and number at least `floor`), this moves everything
the collector tracks out of its sight (`gc.freeze`, as CPython's docs suggest for
long-lived objects), after collecting the young generations so that little garbage goes
with them. A frozen object is still freed when its last reference goes (reference
counting does not look at generations); only a reference cycle that was already garbage
when frozen is never collected. Closed connections leave none (`tests/test_churn.py`), and
growth by a tenth at a time means a few dozen freezes from 1,000 to 100,000 connections,
so what could be held that way stays small.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

GROWTH = 1.1  # freeze again once the connections grew by a tenth since the last freeze
FLOOR = 1000  # below this many connections a full collection is short: leave it alone


class CollectorCalm:
    """Freeze what the collector tracks as the connection count grows (see the module)."""

    def __init__(self, connections: Callable[[], int], period: float = 5.0) -> None:
        self._connections = connections
        self.period = period
        self.frozen_for = 0  # connections at the last freeze
        self.freezes = 0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + self.period, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + self.period, self._tick)
        self.check()

    def check(self) -> bool:
        """Freeze if the connections grew enough since the last freeze; True if it did."""
        n = self._connections()
        self.frozen_for = min(self.frozen_for, n)  # closed ones were freed: count from here
        if n < FLOOR or n < self.frozen_for * GROWTH:
            return False
        gc.collect(1)  # the young generations: cheap, and their garbage is not frozen
        gc.freeze()
        self.frozen_for = n
        self.freezes += 1
        log.debug("%d connections: %d objects frozen", n, gc.get_freeze_count())
        return True
