"""One connection: identity, rooms, pending frames, counters and its rate bucket."""

from __future__ import annotations

import asyncio
import enum
import time

from aiohttp import web

from ..protocol import CloseCode


class RateVerdict(enum.Enum):
    WITHIN = "within"
    FIRST_OVER = "first over"
    OVER = "over"
    CUT = "cut"


class Client:
    """A WebSocket connection as the Hub sees it. The Hub never awaits it."""

    __slots__ = (
        "id",
        "user_id",
        "name",
        "remote",
        "user_agent",
        "ws",
        "transport",
        "fd",
        "rooms",
        "pending",
        "closed",
        "close_code",
        "connected_at",
        "msgs_in",
        "msgs_out",
        "unconfirmed",
        "allowed_rooms",
        "_tokens",
        "_tokens_at",
        "limited_since",
        "heard",
        "quiet",
    )

    def __init__(
        self,
        conn_id: str,
        user_id: str,
        name: str,
        remote: str,
        ws: web.WebSocketResponse | None,
        transport: asyncio.Transport | None,
        allowed_rooms: frozenset[str] | None = None,
        fd: int = -1,
        user_agent: str = "",
    ) -> None:
        self.id = conn_id
        self.user_id = user_id
        self.name = name
        self.remote = remote
        self.user_agent = user_agent  # for the console's detail view (interned: shared)
        self.ws = ws
        self.transport = transport
        # the socket outbox.Outbox writes to itself when the transport holds nothing, or -1
        # (FastPaths.direct_fd)
        self.fd = fd
        self.rooms: set[str] = set()
        self.pending: bytes | list[bytes] | None = None  # this tick's frames (outbox.Outbox)
        self.closed = False
        self.close_code: int | None = None
        self.connected_at = time.time()
        self.msgs_in = 0
        self.msgs_out = 0
        self.unconfirmed = 0  # chat messages handed to the broker, not yet published
        self.allowed_rooms = allowed_rooms  # from a token's `rooms` claim; None: any room
        self._tokens = -1.0  # token bucket, filled on first use
        self._tokens_at = 0.0
        self.limited_since: float | None = None
        self.heard = True  # a frame came since the last heartbeat sweep (heartbeat.py)
        self.quiet = 0  # heartbeat sweeps since the last frame

    def __repr__(self) -> str:
        return f"<Client {self.id} {self.user_id!r} {self.remote}>"

    def mark_closed(self, code: int | None) -> None:
        """No more frames for this connection; `code` is its close code unless one is set."""
        self.closed = True
        if self.close_code is None:
            self.close_code = code

    def abort(self) -> None:
        """Drop the connection without a close handshake (it then reports 1006)."""
        if self.close_code is None:
            self.close_code = CloseCode.ABNORMAL
        if self.transport is not None:
            self.transport.abort()  # the read loop ends; the handler tells the Hub

    def take_token(self, rate: float, now: float) -> bool:
        """Token bucket: `rate` per second, burst twice that. False when over the rate."""
        burst = 2 * rate
        if self._tokens < 0:
            self._tokens, self._tokens_at = burst, now
        else:
            self._tokens = min(burst, self._tokens + (now - self._tokens_at) * rate)
            self._tokens_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    @property
    def tokens(self) -> float:
        return self._tokens

    def rate_verdict(self, rate: float, now: float, grace: float) -> RateVerdict:
        """One more frame (text or control) against the token bucket: within the rate;
        over it (FIRST_OVER the first time); or over it for `grace` seconds since the first
        time, which ends the connection. Slowing down for a second's worth forgives."""
        if not rate:
            return RateVerdict.WITHIN
        if self.take_token(rate, now):
            if self.limited_since is not None and self._tokens >= rate:
                self.limited_since = None
            return RateVerdict.WITHIN
        if self.limited_since is None:
            self.limited_since = now
            return RateVerdict.FIRST_OVER
        if now - self.limited_since >= grace:
            return RateVerdict.CUT
        return RateVerdict.OVER

    def buffered_bytes(self) -> int:
        """Bytes written but not yet taken by the kernel (the slow-consumer measure)."""
        t = self.transport
        return t.get_write_buffer_size() if t is not None and not t.is_closing() else 0
