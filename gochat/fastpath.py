"""The fan-out fast path: frame once, write every frame of a tick in one call per client.

Why it is shaped this way (see docs/performance.md for the measurements):
- A chat message is serialised once and wrapped in a WebSocket frame once (server frames
  are unmasked, so the same bytes are valid on every connection); members get those bytes.
- No coroutine, await or task per recipient: `Outbox.push` appends to the client's pending
  list and marks it dirty; one `call_soon` per tick writes each dirty client's frames with
  a single `transport.write`. Under load several frames share one syscall; at low load a
  frame waits only for the end of the current loop iteration.
- `transport.write` never blocks. What the kernel did not take stays in the transport's
  buffer, and that buffer, in bytes, is the slow-consumer rule: past the limit the client
  is closed with 1013. A reader that keeps up never accumulates, however bursty the room.
- aiohttp still owns the socket for reading and the close handshake (pings and pongs go
  through the Outbox, heartbeat.py); its frames and ours are whole frames written
  synchronously, so they interleave only at frame boundaries.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import Client

_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final, uncompressed WebSocket text frame carrying `payload`."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _LEN16.pack(0x81, 126, n) + payload
    return _LEN64.pack(0x81, 127, n) + payload


class Outbox:
    """Collects the frames of one event-loop tick and writes them once per client.

    Two rules close a connection with 1013 (through the callbacks): more than `limit_bytes`
    unsent (checked at every write), and a backlog that has not drained to zero for
    `write_timeout` seconds (a peer that reads a trickle, or not at all, pins its buffer
    long before it reaches the byte limit). The second needs no task per connection: the
    first write that leaves bytes unsent records the time, any later observation of an
    empty buffer forgets it, and one timer sweeps only the backlogged connections.
    """

    def __init__(
        self,
        limit_bytes: int,
        on_overflow: Callable[[Client], None],
        write_timeout: float = 0.0,
        on_stuck: Callable[[Client], None] | None = None,
    ) -> None:
        self.limit_bytes = limit_bytes
        self._on_overflow = on_overflow
        self.write_timeout = write_timeout if on_stuck is not None else 0.0
        self._on_stuck = on_stuck
        self._dirty: list[Client] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backlog: dict[Client, float] = {}  # client -> loop time its backlog began
        self._sweeper: asyncio.TimerHandle | None = None
        self.writes = 0  # transport.write calls, for the console and the benchmarks
        self.frames = 0

    def push(self, client: Client, frame: bytes) -> None:
        """Queue `frame` for `client`; it is written at the end of this tick."""
        if client.closed:
            return
        pending = client.pending
        if not pending:
            self._dirty.append(client)
            if not self._scheduled:
                self._schedule()
        pending.append(frame)

    def push_all(self, clients: Iterable[Client], frame: bytes) -> None:
        """`push(client, frame)` for each of `clients`: the room fan-out, one loop, no calls."""
        dirty = self._dirty
        for client in clients:
            if client.closed:
                continue
            pending = client.pending
            if not pending:
                dirty.append(client)
            pending.append(frame)
        if dirty and not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every dirty client's frames; close the ones whose buffer is over the limit."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        limit = self.limit_bytes
        backlog = self._backlog
        writes = frames = 0
        for client in dirty:
            pending = client.pending
            n = len(pending)
            data = pending[0] if n == 1 else b"".join(pending)
            pending.clear()
            transport = client.transport
            if client.closed or transport is None or transport.is_closing():
                continue
            transport.write(data)
            writes += 1
            frames += n
            client.msgs_out += n
            unsent = transport.get_write_buffer_size()
            if unsent:
                if unsent > limit:
                    self._on_overflow(client)
                elif self.write_timeout and client not in backlog:
                    self._note_backlog(client)
            elif backlog:
                backlog.pop(client, None)
        self.writes += writes
        self.frames += frames

    def _note_backlog(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        self._backlog[client] = loop.time()
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_interval(), self._sweep)

    def _sweep_interval(self) -> float:
        return min(1.0, self.write_timeout / 4)

    def _sweep(self) -> None:
        """Close the connections whose backlog is older than `write_timeout`."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        stuck = []
        for client, since in list(self._backlog.items()):
            transport = client.transport
            if client.closed or transport is None or transport.is_closing():
                del self._backlog[client]
            elif not transport.get_write_buffer_size():
                del self._backlog[client]
            elif now - since >= self.write_timeout:
                del self._backlog[client]
                stuck.append(client)
        for client in stuck:
            if self._on_stuck is not None:
                self._on_stuck(client)
        if self._backlog:
            self._sweeper = loop.call_later(self._sweep_interval(), self._sweep)

    def backlogged(self) -> int:
        """Connections with unsent bytes being timed (for tests and the console)."""
        return len(self._backlog)

    def stop(self) -> None:
        """Stop the sweeps (shutdown)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._backlog.clear()
