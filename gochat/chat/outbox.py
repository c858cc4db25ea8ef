"""The fan-out fast path: frame once, write every frame of a tick in one call per client.

Why it is shaped this way (see docs/performance.md for the measurements):
- A chat message is serialised once and wrapped in a WebSocket frame once (server frames
  are unmasked, so the same bytes are valid on every connection); members get those bytes.
- No coroutine, await or task per recipient: `Outbox.push` keeps the frame as the client's
  pending bytes and marks it dirty; one `call_soon` per tick writes each dirty client's
  frames with a single write. Under load several frames share one syscall.
- At low load a tick carries one message, and queueing it would coalesce nothing while
  visiting every member twice: so the first room fan-out of a tick that follows a quiet
  tick (at most one fan-out) is written at once, and only later fan-outs of that tick, and
  every one of the ticks after a busy tick, wait for the flush.
- When a client's transport holds no bytes, `flush` writes to its socket itself: one
  `os.write`, which is what `transport.write` does then, without the transport's per-call
  bookkeeping (under uvloop the largest part of the server's own CPU at low load:
  docs/performance.md). Whatever the kernel does not take, and every error, is handed to the
  transport, so it still owns buffering, flow control and closing. Only plain socket
  transports qualify (`client.fd`, from FastPaths.direct_fd in aiohttp_internals.py).
- `transport.write` never blocks. What the kernel did not take stays in the transport's
  buffer, and that buffer, in bytes, is the slow-consumer rule: past the limit the client
  is closed with 1013. A reader that keeps up never accumulates, however bursty the room.
- aiohttp still owns the socket for reading and the close handshake (pings and pongs go
  through the Outbox, heartbeat.py); its frames and ours are whole frames written
  synchronously, so they interleave only at frame boundaries.
- On the way in, a chat frame is handled in aiohttp's data callback rather than by waking
  the connection's task (the inline reader of aiohttp_internals.py), whenever that cannot
  overtake an earlier frame.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

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
        self._fanouts = 0  # push_all calls in this tick
        self._quiet = True  # the last tick had at most one: this tick's first goes at once
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
        if pending is None:
            client.pending = frame
            self._dirty.append(client)
            if not self._scheduled:
                self._schedule()
        elif pending.__class__ is list:
            pending.append(frame)
        else:
            client.pending = [pending, frame]  # type: ignore[list-item]

    def discard(self, client: Client) -> None:
        """Forget `client`'s frames of this tick (it is being closed)."""
        client.pending = None

    def push_all(self, clients: Collection[Client], frame: bytes) -> None:
        """`push(client, frame)` for each of `clients`: the room fan-out, one loop, no calls.

        The first fan-out of a tick that follows a quiet one (at most one fan-out) is
        written at once (`_write_now`); every other one is queued for the tick's flush.

        A client's pending frames are None, one bytes object, or a list from the second
        frame of a tick on: the common case (one frame per client per tick) allocates
        nothing per member, and every object this touches per member is one fewer cache
        miss when a thousand members are written in a row.
        """
        self._fanouts += 1
        if self._quiet and self._fanouts == 1:
            self._write_now(clients, frame)
            return
        dirty = self._dirty
        for client in clients:
            if client.closed:
                continue
            pending = client.pending
            if pending is None:
                client.pending = frame
                dirty.append(client)
            elif pending.__class__ is list:
                pending.append(frame)
            else:
                client.pending = [pending, frame]  # type: ignore[list-item]
        if dirty and not self._scheduled:
            self._schedule()

    def _write_now(self, clients: Collection[Client], frame: bytes) -> None:
        """A quiet tick's first fan-out: write `frame` to each member's socket now.

        At low load a tick carries one message, so waiting for its end coalesces nothing
        and costs each member a second visit (queue, then flush). Writing at once is what
        the flush would do, and keeps its rules: only a socket whose transport holds
        nothing and that has no frame queued earlier in the tick (those are queued behind
        it, so nothing is overtaken); a partial or failed write goes to the transport. The
        flush is still scheduled, to end the tick: a second fan-out in it is queued, and
        the ticks after a busy one queue everything, so under load each client still gets
        one write per tick. `clients` may be a room's live member view: nothing called here
        changes a membership (a slow consumer's close is a task, `Hub.drop`).
        """
        if not self._scheduled:
            self._schedule()
        backlog = self._backlog
        write = os.write
        size = len(frame)
        skipped = 0  # the members not written here: counting those costs nothing per write
        for client in clients:
            if client.closed:
                skipped += 1
                continue
            fd = client.fd
            if fd < 0 or client.pending is not None:
                self.push(client, frame)
                skipped += 1
                continue
            transport: Any = client.transport  # not None: fd >= 0
            if transport.is_closing():
                skipped += 1
                continue  # the flush skips it too: aiohttp is closing it
            if transport.get_write_buffer_size():
                self.push(client, frame)
                skipped += 1
                continue
            client.msgs_out += 1
            try:
                sent = write(fd, frame)
            except OSError:  # the transport meets it again
                sent = 0
            if sent != size:
                self._to_transport(client, transport, frame[sent:])
            elif backlog:
                backlog.pop(client, None)
        writes = len(clients) - skipped
        self.writes += writes
        self.frames += writes

    def _schedule(self) -> None:
        self._scheduled = True
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every dirty client's frames; close the ones whose buffer is over the limit."""
        self._scheduled = False
        self._quiet = self._fanouts <= 1
        self._fanouts = 0
        if not self._dirty:  # a quiet tick's fan-out went out already (_write_now)
            return
        dirty, self._dirty = self._dirty, []
        backlog = self._backlog
        frames = skipped = 0
        write = os.write
        for client in dirty:
            data: Any = client.pending  # None, bytes or list[bytes]: see push_all
            client.pending = None
            transport = client.transport
            if client.closed or data is None or transport is None or transport.is_closing():
                skipped += 1
                continue
            if data.__class__ is list:
                n = len(data)
                data = b"".join(data)
            else:
                n = 1
            frames += n
            client.msgs_out += n
            fd = client.fd
            if fd >= 0 and not transport.get_write_buffer_size():
                # What transport.write would do, minus its bookkeeping: one write(2). An
                # open transport's fd is its own (it is closed only after is_closing()).
                try:
                    sent = write(fd, data)
                except OSError:  # EAGAIN, EPIPE...: the transport meets it again below
                    sent = 0
                if sent == len(data):
                    if backlog:
                        backlog.pop(client, None)
                    continue
                data = data[sent:]
            self._to_transport(client, transport, data)
        self.writes += len(dirty) - skipped
        self.frames += frames

    def _to_transport(self, client: Client, transport: Any, data: bytes) -> None:
        """Hand `data` to the transport, which buffers what the kernel does not take."""
        transport.write(data)
        unsent = transport.get_write_buffer_size()
        if unsent:
            self._unsent(client, unsent)
        elif self._backlog:
            self._backlog.pop(client, None)

    def _unsent(self, client: Client, unsent: int) -> None:
        """The kernel did not take all of a write: the slow-consumer rules (class docstring)."""
        if unsent > self.limit_bytes:
            self._on_overflow(client)
        elif self.write_timeout and client not in self._backlog:
            self._note_backlog(client)

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
