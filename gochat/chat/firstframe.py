"""The first-frame timeout with one timer for every connection, not one each.

A socket that never says anything holds a slot (and, with a per-IP cap, its owner's quota)
for free: every real client sends `join` right after `welcome`, so a connection that sent no
message within GOCHAT_HANDSHAKE_TIMEOUT of its upgrade is closed 1008.

Every connection is watched for the same length of time, so deadlines fall in the order the
connections arrive: an insertion-ordered map from client to deadline, its head the next
deadline, and one loop timer armed for it. A `loop.call_later` per connection costs a
handle, its arguments, a copied context and a heap slot for its first seconds; an entry
here is a fraction of that (docs/performance.md, S3), and leaving (`forget`) stays O(1).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from .client import Client

EARLY = 0.001  # a loop timer may fire this much before its time; counted as on time


class FirstFrameWatch:
    """Calls `on_silent(client)` for each watched client that has sent no message
    (`msgs_in == 0`) `timeout` seconds after `watch(client)`, unless forgotten first."""

    def __init__(self, timeout: float, on_silent: Callable[[Client], None]) -> None:
        self.timeout = timeout
        self._on_silent = on_silent
        self._due: OrderedDict[Client, float] = OrderedDict()  # in deadline order
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.timeout
        self._due[client] = due
        if self._timer is None:
            self._timer = loop.call_at(due, self._expire)

    def forget(self, client: Client) -> None:
        """The connection ended: stop watching it (and holding it)."""
        self._due.pop(client, None)

    def __len__(self) -> int:
        return len(self._due)

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time() + EARLY
        due = self._due
        while due:
            client, when = next(iter(due.items()))
            if when > now:
                self._timer = loop.call_at(when, self._expire)
                return
            del due[client]
            if client.msgs_in == 0:
                self._on_silent(client)

    def stop(self) -> None:
        """Shutdown: no more timeouts."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()
