"""What the broker hands this node: room messages framed once and handed to every local
member, presence transitions, and the broker's own state. The broker's listener
(brokers.base.BrokerListener).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from ..brokers.base import (
    CHAT,
    CHAT_PREFIX,
    PRESENCE,
    PRESENCE_PREFIX,
    Broker,
    split_envelope,
)
from ..events import EventTap
from ..protocol import CloseCode
from .client import Client
from .memberships import Memberships
from .outbox import Outbox, text_frame
from .stats import ChatStats

log = logging.getLogger(__name__)

# How the wire JSON of each envelope kind starts (see Delivery.deliver)
WIRE_PREFIX = {CHAT: CHAT_PREFIX, PRESENCE: PRESENCE_PREFIX}
BAD_ENVELOPE_LOG_EVERY = 1000  # after the first, log one malformed message in this many


class Delivery:
    """The broker's listener on this node: never awaits, never decodes a chat message."""

    def __init__(
        self,
        memberships: Memberships,
        outbox: Outbox,
        broker: Broker,
        tap: EventTap,
        stats: ChatStats,
        drop: Callable[[Client, int, str], None],
        closing: Callable[[], bool],
    ) -> None:
        self.memberships = memberships
        self._outbox = outbox
        self.broker = broker
        self.tap = tap
        self.node_id = broker.node_id
        self.stats = stats
        self._drop = drop  # Hub.drop
        self._closing = closing  # whether the node is shutting down
        self.room_msgs: Counter[str] = Counter()  # chat messages delivered per local room
        # called with each chat message's wire JSON once it is handed to members (metrics)
        self._on_fanout: Callable[[bytes], None] | None = None

    def deliver(self, room: str, envelope: bytes) -> bool:
        """Broker callback: hand one room message to every local member, framed once.

        What arrives from Redis is checked cheaply before it reaches a client: a known kind,
        wire JSON that starts as that kind's messages do and ends with `}`, valid UTF-8
        (a text frame must be): a fraction of what json.loads would cost per message per
        node (docs/performance.md). It keeps out accidents (a truncated payload, another
        program on our channel); whoever can PUBLISH to our Redis can still send a
        well-formed fake, and could do worse anyway, so it is not meant to stop them.
        """
        try:
            kind, key, wire = split_envelope(envelope)
            if not (wire.startswith(WIRE_PREFIX[kind]) and wire.endswith(b"}")):
                raise ValueError("not a message of its kind")
            if not wire.isascii():
                wire.decode()  # UnicodeDecodeError is a ValueError
        except (ValueError, KeyError):
            self._bad_envelope(room, envelope)
            return False
        self.fan_out(room, kind, key, wire)
        return True

    def fan_out(self, room: str, kind: int, key: bytes, wire: bytes) -> None:
        """Hand one room message to every local member, framed once: what `deliver` does
        after its checks, and what the in-memory broker calls for a message this process
        made itself (there is no envelope to check)."""
        frame = text_frame(wire)
        members = self.memberships.rooms.get(room)
        if members:
            if kind == CHAT:
                self._outbox.push_all(members.values(), frame)
            elif kind == PRESENCE:
                user_id = key.decode()
                others = [c for c in members.values() if c.user_id != user_id]
                self._outbox.push_all(others, frame)
        waiting = self.memberships.joining.get(room)
        if waiting:
            for buffered in waiting.values():
                buffered.append((kind, key, frame))
        self.stats.delivered += 1
        if kind == CHAT:
            self.room_msgs[room] += 1
            if self._on_fanout is not None:
                self._on_fanout(wire)

    def on_fanout(self, observe: Callable[[bytes], None] | None) -> None:
        """Call `observe` with each chat message's wire JSON once it is handed to members."""
        self._on_fanout = observe

    def room_message_counts(self) -> dict[str, int]:
        """Chat messages delivered so far per room this node is in (a copy); the rooms it
        left are forgotten here."""
        counts = self.room_msgs
        for room in [r for r in counts if r not in self.memberships.rooms]:
            del counts[room]
        return dict(counts)

    def _bad_envelope(self, room: str, envelope: bytes) -> None:
        self.stats.bad_envelopes += 1
        count = self.stats.bad_envelopes
        if count == 1 or count % BAD_ENVELOPE_LOG_EVERY == 0:
            log.warning(
                "dropped a malformed broker message on %r (%d so far): %r",
                room[:64],
                count,
                envelope[:80],
            )

    def presence_transition(self, room: str, envelope: bytes) -> None:
        """Broker callback: a presence transition this node made, for the console.

        Reported by the node whose request made it rather than by every node that delivers
        it, so a cluster console shows one line per transition. That node may not receive
        the room at all (its last member there just left, or it reaped another node's).
        """
        if not self.tap.active:
            return
        try:
            _, key, wire = split_envelope(envelope)
        except ValueError:
            return
        self.tap.emit(
            "PRESENCE",
            self.node_id,
            self.broker.channel(room),
            wire.decode(errors="replace"),
            room=room,
            user=key.decode(errors="replace"),
        )

    def missed(self, room: str) -> None:
        """Broker callback: this node missed messages of `room` that it cannot replay. Its
        members reconnect and rejoin with `since`, so each is told `recovered: false`
        instead of living with a silent hole."""
        members = self.memberships.rooms.get(room)
        for client in list(members.values()) if members else ():
            self.stats.resync_closes += 1
            self._drop(client, CloseCode.TRY_AGAIN, "messages missed: rejoin with since")

    def broker_state(self, ready: bool, reason: str) -> None:
        """Broker callback: it became usable or unusable."""
        log.log(
            logging.INFO if ready or self._closing() else logging.WARNING,
            "broker %s: %s",
            "up" if ready else "down",
            reason,
        )
        if ready:
            self.stats.broker_ups += 1
        self.tap.emit("BROKER_UP" if ready else "BROKER_DOWN", self.node_id, reason)
