"""A fragmented message must end in time: the frame headers of what a client sends, read as
they arrive.

aiohttp assembles a fragmented message (a text frame without FIN, then continuation frames)
and hands it over only once its last fragment came; until then nothing reaches the read
loop, and pings in between keep the connection looking alive. Its bytes count toward
GOCHAT_MAX_FRAME as they arrive (aiohttp refuses a fragment that would pass it, 1009), but
nothing bounded the time: a client could send one fragment and then only pings, holding the
buffer for ever. `FragmentWatch` follows the frame boundaries of the raw bytes (headers
only: the payload is skipped, never read) and calls `overdue` when a fragmented message has
not ended `timeout` seconds after it began. It sees the bytes through the inline reader's
chunk hook (aiohttp_internals.FastPaths.watch_chunks), so with the fast paths off only
GOCHAT_MAX_FRAME bounds such a message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

_LEN16 = 126
_LEN64 = 127


class FragmentWatch:
    """Follows one connection's client frames; one timer while a fragmented message is open."""

    __slots__ = ("_skip", "_head", "_timer", "timeout", "overdue")

    def __init__(self, timeout: float, overdue: Callable[[], None]) -> None:
        self.timeout = timeout
        self.overdue = overdue  # called once when a fragmented message did not end in time
        self._skip = 0  # bytes of the current frame's payload still to come
        self._head = b""  # a frame header cut by the end of a chunk
        self._timer: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        """A fragmented message has begun and not ended."""
        return self._timer is not None

    def feed(self, data: bytes) -> None:
        """Read the frame headers in `data`, the next bytes the client sent."""
        n = len(data)
        skip = self._skip
        if skip >= n:  # the middle of a long payload
            self._skip = skip - n
            return
        if self._head:
            data = self._head + data
            n = len(data)
            self._head = b""
        pos = skip
        while pos < n:
            if n - pos < 2:
                self._head = bytes(data[pos:])
                self._skip = 0
                return
            first = data[pos]
            second = data[pos + 1]
            length = second & 0x7F
            header = 2 if length < _LEN16 else 4 if length == _LEN16 else 10
            if second & 0x80:
                header += 4  # the mask key
            if n - pos < header:
                self._head = bytes(data[pos:])
                self._skip = 0
                return
            if length == _LEN16:
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == _LEN64:
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            opcode = first & 0x0F
            if opcode < 8:  # a data frame (control frames may come between fragments)
                if first & 0x80:  # FIN
                    if opcode == 0:
                        self._ended()
                elif opcode:  # text or binary without FIN: a fragmented message begins
                    self._began()
            pos += header + length
        self._skip = pos - n

    def _began(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.timeout, self._expired)

    def _ended(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        self.overdue()

    def stop(self) -> None:
        """The connection ended: no timer outlives it."""
        self._ended()
