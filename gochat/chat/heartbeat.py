"""Pings and dead-peer detection with one timer for every connection, not one each.

aiohttp's own heartbeat arms a loop timer per connection and, on every chunk a peer sends,
schedules a callback to push that timer back. Under uvloop a timer is a libuv handle plus
its Python wrapper per idle connection (docs/performance.md, S3), and a `call_soon` per
incoming message. Here the read loop only sets `client.heard` on every
frame it receives (text, ping or pong), and one sweep every GOCHAT_HEARTBEAT / 4 seconds
walks the connections:

- heard since the last sweep: quiet count back to 0;
- quiet for GOCHAT_HEARTBEAT (4 sweeps): a ping goes out, through the Outbox, so it is
  ordered with the connection's other frames and costs no write of its own under load;
- still quiet GOCHAT_HEARTBEAT / 2 after the ping (6 sweeps): the peer is taken as dead
  and the TCP connection is aborted, as gorilla's read deadline and aiohttp's heartbeat do
  (no close frame: nobody is there to read it). The read loop then ends and the Hub
  forgets the connection (presence `offline`), with close code 1006 on the event tap.

So a silent peer is pinged after 1 to 1.25 × GOCHAT_HEARTBEAT and dropped after 1.5 to
1.75 ×, whatever the number of connections; a sweep costs a few attribute reads per
connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from .client import Client

PING_FRAME = b"\x89\x00"  # unmasked, final, empty ping
PING_AFTER = 4  # sweeps without a frame from the peer before it is pinged
DEAD_AFTER = 6  # ... before it is dropped (two sweeps, half a heartbeat, after the ping)


def pong_frame(payload: bytes) -> bytes:
    """The answer to a client's ping: an unmasked pong echoing its payload (<= 125 bytes)."""
    return bytes((0x8A, len(payload))) + payload


class Heartbeat:
    """Every `interval / 4` seconds: ping the connections that were quiet for `interval`,
    and call `on_dead(client)` for those still quiet half an interval after their ping."""

    def __init__(
        self,
        interval: float,
        clients: Callable[[], Iterable[Client]],
        ping: Callable[[Client], None],
        on_dead: Callable[[Client], None],
    ) -> None:
        self.period = interval / 4
        self._clients = clients
        self._ping = ping
        self._on_dead = on_dead
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + self.period, self._sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        # the next sweep is due one period after this one was, not after it ran: a busy
        # loop does not stretch the heartbeat
        when = self._timer.when() + self.period if self._timer is not None else loop.time()
        self._timer = loop.call_at(max(when, loop.time()), self._sweep)
        ping, dead = PING_AFTER, DEAD_AFTER
        for client in list(self._clients()):
            if client.heard:
                client.heard = False
                client.quiet = 0
                continue
            quiet = client.quiet = client.quiet + 1
            if quiet == ping:
                self._ping(client)
            elif quiet >= dead and not client.closed:
                self._on_dead(client)
