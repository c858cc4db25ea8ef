"""The event tap: every state change of a node passes `EventTap.emit`.

The operations console, the metrics and the cluster-wide events channel attach as sinks.
With no sink attached `emit` returns at once, so the chat path pays one attribute test.
Events print in Redis-MONITOR style:

    1732740000.123456 [node-a 10.0.0.7:51234] "PUBLISH" "gochat:room:lobby" "{...}"
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "node": self.node,
            "addr": self.addr,
            "kind": self.kind,
            "args": list(self.args),
            "room": self.room,
            "user": self.user,
            "conn": self.conn,
            "line": self.monitor_line(),
        }

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
