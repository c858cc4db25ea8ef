"""The broker contract: fan-out, history and presence, knowing nothing about WebSockets.

Every room message makes the round trip through the broker, in memory too, so there is one
order per room on every node. The broker hands each room message to the node's handler as an
*envelope*: one kind byte, a key, a newline, then the exact JSON the clients receive. The Hub
reads the key without decoding the JSON, so each message is decoded at most once per node
(in practice never: its bytes are framed and written as they are). The in-memory broker's
chat messages never leave the process, so it hands the Hub their parts (`on_local`) rather
than an envelope to build, split and check.

    c<id>\n<chat JSON>          a chat message, to every local member
    p<userId>\n<presence JSON>  a presence transition, to every local member but that user
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

from ..protocol import Member, encode

CHAT = ord("c")
PRESENCE = ord("p")

MessageHandler = Callable[[str, bytes], bool]
"""Called with (room, envelope) for every message on a room this node subscribes to;
returns False when the envelope was malformed and dropped."""

LocalHandler = Callable[[str, int, bytes, bytes], None]
"""Called with (room, kind, key, wire JSON) for a message of this process's own making, by
a broker that delivers within the process (in memory): the envelope's parts, with nothing
to check, since they never left the process."""

TransitionHandler = Callable[[str, bytes], None]
"""Called with (room, presence envelope) for each presence transition that this node's own
request made (a join, a leave, a re-registration, a reaping): once per transition in the
cluster, whether or not this node receives the room. The console's PRESENCE line."""

StateHandler = Callable[[bool, str], None]
"""Called with (ready, reason) whenever the broker becomes usable or unusable."""

EventHandler = Callable[[bytes], None]
"""Called with each cluster event (see events.py) published by any node."""

PresenceSource = Callable[[], Iterable[tuple[str, str, str, str]]]
"""(room, connection id, userId, name) of every local membership: what a broker that lost
its backend registers again when it returns."""

GapHandler = Callable[[str], None]
"""Called with a room whose messages this node missed (deaf subscription) beyond what the
room's history still holds: its members cannot be brought up to date in place."""

NodeInfo = Callable[[], dict[str, Any]]
"""A JSON-able description of this node: id, uptime, connections, rooms, memory..."""

History = list[tuple[bytes, bytes]]
"""(id, wire JSON) of kept chat messages, oldest first."""

CHAT_PREFIX = b'{"type":"chat","id":"'
PRESENCE_PREFIX = b'{"type":"presence",'


class BrokerUnavailable(Exception):
    """The broker cannot take this request now; the caller answers `unavailable`."""


def chat_suffix(fields: dict[str, Any]) -> bytes:
    """The part of a chat message after its id: `wire = CHAT_PREFIX + id + suffix`.

    The broker chooses the id (a Redis Stream id in Redis), so the message is serialised
    once without it and the id is spliced in, in Python or in a Lua script alike.
    """
    return b'",' + encode(fields)[1:]


def chat_envelope(msg_id: bytes, wire: bytes) -> bytes:
    return b"c" + msg_id + b"\n" + wire


def presence_envelope(user_id: str, wire: bytes) -> bytes:
    return b"p" + user_id.encode() + b"\n" + wire


def split_envelope(envelope: bytes) -> tuple[int, bytes, bytes]:
    """(kind, key, wire JSON) of an envelope; raises ValueError when it is not one."""
    nl = envelope.index(b"\n")
    return envelope[0], envelope[1:nl], envelope[nl + 1 :]


class Broker(ABC):
    """Fan-out, history and presence for one node; one implementation per backend."""

    kind: str = "abstract"

    def __init__(self, node_id: str, history: int) -> None:
        self.node_id = node_id
        self.history_size = history
        self.ready = False
        self.reason = "not started"
        self._on_message: MessageHandler | None = None
        self._on_local: LocalHandler | None = None
        self._on_state: StateHandler | None = None
        self._on_transition: TransitionHandler | None = None
        self._on_gap: GapHandler | None = None
        self._on_event: EventHandler | None = None
        self._presence_source: PresenceSource | None = None
        self._node_info: NodeInfo | None = None

    def bind(
        self,
        on_message: MessageHandler,
        on_state: StateHandler | None = None,
        presence_source: PresenceSource | None = None,
        on_transition: TransitionHandler | None = None,
        on_gap: GapHandler | None = None,
        on_local: LocalHandler | None = None,
    ) -> None:
        """Set the callbacks the broker's listener delivers to (the Hub's)."""
        self._on_message = on_message
        self._on_state = on_state
        self._presence_source = presence_source
        self._on_transition = on_transition
        self._on_gap = on_gap
        self._on_local = on_local

    def _missed(self, room: str) -> None:
        """Report that this node missed messages of `room` it can no longer recover."""
        if self._on_gap is not None:
            self._on_gap(room)

    def _transitioned(self, room: str, envelope: bytes) -> None:
        """Report a presence transition this node published (see TransitionHandler)."""
        if self._on_transition is not None:
            self._on_transition(room, envelope)

    def set_event_handler(self, on_event: EventHandler | None) -> None:
        """Receive every node's console events (what `publish_event` sends, own included)."""
        self._on_event = on_event

    def set_node_info(self, node_info: NodeInfo | None) -> None:
        """What this node reports about itself to the cluster (the console's nodes table)."""
        self._node_info = node_info

    def _set_state(self, ready: bool, reason: str) -> None:
        changed = ready != self.ready
        self.ready, self.reason = ready, reason
        if changed and self._on_state is not None:
            self._on_state(ready, reason)

    @abstractmethod
    async def start(self) -> None:
        """Begin listening; return without waiting for a backend that is down."""

    @abstractmethod
    async def stop(self) -> None:
        """Leave cleanly (this node's presence removed) and stop every task."""

    @abstractmethod
    async def subscribe(self, room: str) -> None:
        """Receive `room`'s messages on this node (called when its first local member joins)."""

    @abstractmethod
    async def unsubscribe(self, room: str) -> None:
        """Stop receiving `room` (called when its last local member leaves)."""

    @abstractmethod
    def submit(self, room: str, suffix: bytes) -> bytes | asyncio.Future[bytes]:
        """Start publishing a chat message: give it an id, append it to the room's history
        and deliver it to every subscribed node, atomically. `suffix` is the message
        serialised once without `type` and `id` (`chat_suffix(fields)`): wire =
        CHAT_PREFIX + id + suffix. Returns the id when the message is published already (in
        memory: no future to create and inspect per message), else a future that gets the
        id, or BrokerUnavailable; raises BrokerUnavailable at once when the broker cannot
        take requests.

        Messages submitted one after another by this node are published in that order, so
        a client's messages keep theirs although its reader does not wait for each.
        """

    async def publish(self, room: str, suffix: bytes) -> str:
        """`submit` and wait: the message's id."""
        pending = self.submit(room, suffix)
        return (pending if isinstance(pending, bytes) else await pending).decode()

    @abstractmethod
    async def history(self, room: str, since: str | None) -> tuple[History, bool | None]:
        """The room's kept messages (id and wire JSON, oldest first). With `since`: those after it
        and True when it is still kept, else all of them and False."""

    @abstractmethod
    async def presence_add(self, room: str, conn_id: str, user_id: str, name: str) -> None:
        """Count one connection of `user_id` in `room`; publish `online` if it is the
        user's first anywhere in the cluster."""

    @abstractmethod
    async def presence_remove(self, room: str, conn_id: str, user_id: str, name: str) -> None:
        """Uncount it; publish `offline` if it was the user's last anywhere in the cluster."""

    @abstractmethod
    async def members(self, room: str) -> list[Member]:
        """The room's members across the cluster, one entry per user."""

    def publish_event(self, data: bytes) -> None:
        """Share one console event with every node; in one process it comes straight back."""
        if self._on_event is not None:
            self._on_event(data)

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live node's `node_info` (just this one in a single process)."""
        info = self._node_info() if self._node_info is not None else {}
        return [{"id": self.node_id, **info, "broker": self.kind, "ready": self.ready}]
