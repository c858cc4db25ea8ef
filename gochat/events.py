"""The event tap: every state change of a node passes `EventTap.emit`.

The operations console, the metrics and the cluster-wide events channel attach as sinks.
With no sink attached `emit` returns at once, so the chat path pays one attribute test.
Events print in Redis-MONITOR style:

    1732740000.123456 [node-a 10.0.0.7:51234] "PUBLISH" "gochat:room:lobby" "{...}"
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MAX_ARG = 512  # longer arguments are cut in the stream (and in logs)

KINDS = (
    "CONNECT",
    "DISCONNECT",
    "JOIN",
    "LEAVE",
    "PUBLISH",
    "PRESENCE",
    "ERROR",
    "KICK",
    "NOTICE",
    "BROKER_UP",
    "BROKER_DOWN",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened on one node."""

    ts: float
    node: str
    addr: str
    kind: str
    args: tuple[str, ...] = ()
    room: str | None = None
    user: str | None = None
    conn: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def monitor_line(self) -> str:
        """The event as one Redis-MONITOR-style line, user data quoted and escaped."""
        quoted = " ".join(quote(a) for a in (self.kind, *self.args))
        return f"{self.ts:.6f} [{self.node} {self.addr}] {quoted}"

    def to_dict(self, line: bool = True) -> dict[str, Any]:
        """The event as JSON-able data; `line` adds its monitor line."""
        data = {
            "ts": self.ts,
            "node": self.node,
            "addr": self.addr,
            "kind": self.kind,
            "args": list(self.args),
            "room": self.room,
            "user": self.user,
            "conn": self.conn,
        }
        if line:
            data["line"] = self.monitor_line()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(
            ts=float(data["ts"]),
            node=str(data["node"]),
            addr=str(data["addr"]),
            kind=str(data["kind"]),
            args=tuple(str(a) for a in data.get("args", ())),
            room=data.get("room"),
            user=data.get("user"),
            conn=data.get("conn"),
        )


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote(value: str, limit: int = MAX_ARG) -> str:
    """Quote like Redis MONITOR (sdscatrepr): escapes, non-printables as \\xHH, cut long."""
    cut = len(value) > limit
    if cut:
        value = value[:limit]
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    if escaped.isprintable():  # the usual case (no control characters), at C speed
        return '"' + escaped + ('..."' if cut else '"')
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + ('..."' if cut else '"')


LOG_ARG = 200  # user data in a log line is cut to this many characters


def loggable(value: object, limit: int = LOG_ARG) -> str:
    """User data (names, rooms, reasons, addresses) for a log line: quoted and escaped like
    the event stream, so it can never start a line of its own, move the cursor or flip the
    text direction, and cut to `limit` characters."""
    return quote(str(value), limit)


Sink = Callable[[Event], None]


class EventTap:
    """Fans each event out to the attached sinks; sinks never block and never raise."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._sinks: list[Sink] = []
        self.active = False

    def attach(self, sink: Sink) -> None:
        self._sinks.append(sink)
        self.active = True

    def detach(self, sink: Sink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)
        self.active = bool(self._sinks)

    def emit(
        self,
        kind: str,
        addr: str,
        *args: str,
        room: str | None = None,
        user: str | None = None,
        conn: str | None = None,
    ) -> None:
        if not self.active:
            return
        self.dispatch(
            Event(time.time(), self.node_id, addr, kind, args, room=room, user=user, conn=conn)
        )

    def dispatch(self, event: Event) -> None:
        """Hand an event (local, or from another node) to every sink."""
        for sink in tuple(self._sinks):
            try:
                sink(event)
            except Exception:  # a broken console must not break the chat
                log.exception("event sink %r failed", sink)


class Feed:
    """One console viewer's queue: bounded, drop-oldest, never blocks the producer.

    Losing a console line is acceptable, slowing the chat is not: `push` is synchronous and
    O(1); when the viewer falls behind the oldest lines go and `dropped` says how many.
    """

    def __init__(self, size: int = 1000) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=size)
        self._ready = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: dict[str, Any]) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    async def take(self) -> tuple[list[dict[str, Any]], int]:
        """Wait for at least one item; return everything queued and the count dropped."""
        await self._ready.wait()
        self._ready.clear()
        items = list(self._items)
        self._items.clear()
        dropped, self.dropped = self.dropped, 0
        return items, dropped


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What one viewer wants to see; an empty field (or `kinds` None) matches everything."""

    room: str = ""
    user: str = ""
    node: str = ""
    kinds: frozenset[str] | None = None
    text: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EventFilter:
        """Build from a browser's `filter` message; unknown kinds and odd types are ignored."""

        def field_of(name: str) -> str:
            value = data.get(name)
            return value.strip()[:128] if isinstance(value, str) else ""

        raw_kinds = data.get("kinds")
        kinds: Iterable[Any] | None = raw_kinds if isinstance(raw_kinds, list) else None
        return cls(
            room=field_of("room"),
            user=field_of("user"),
            node=field_of("node"),
            kinds=None
            if kinds is None
            else frozenset(k for k in kinds if isinstance(k, str) and k in KINDS),
            text=field_of("text"),
        )

    def wants(self, event: dict[str, Any]) -> bool:
        """Every test but the text one (which needs the monitor line)."""
        if self.kinds is not None and event["kind"] not in self.kinds:
            return False
        if self.room and event.get("room") != self.room:
            return False
        if self.user and event.get("user") != self.user:
            return False
        return not self.node or event["node"] == self.node

    def matches(self, event: dict[str, Any]) -> bool:
        """`event` has its `line`."""
        if not self.wants(event):
            return False
        return not self.text or self.text.lower() in event["line"].lower()
