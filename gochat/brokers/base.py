"""The broker contract: fan-out, history and presence, knowing nothing about WebSockets.

Every room message makes the round trip through the broker, in memory too, so there is one
order per room on every node. The broker hands each room message to the node's handler as an
*envelope*: one kind byte, a key, a newline, then the exact JSON the clients receive. The Hub
reads the key without decoding the JSON, so each message is decoded at most once per node
(in practice never: its bytes are framed and written as they are). The in-memory broker's
chat messages never leave the process, so it hands the Hub their parts (`fan_out`) rather
than an envelope to build, split and check.

    c<id>\n<chat JSON>          a chat message, to every local member
    p<userId>\n<presence JSON>  a presence transition, to every local member but that user
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any, Protocol

from ..protocol import Member, encode

CHAT = ord("c")
PRESENCE = ord("p")


class BrokerListener(Protocol):
    """What a broker's listener delivers to, on this node: the Hub implements it."""

    def deliver(self, room: str, envelope: bytes) -> bool:
        """A message on a room this node subscribes to; False when the envelope was
        malformed and dropped."""

    def fan_out(self, room: str, kind: int, key: bytes, wire: bytes) -> None:
        """A message of this process's own making, from a broker that delivers within the
        process (in memory): the envelope's parts, with nothing to check."""

    def broker_state(self, ready: bool, reason: str) -> None:
        """The broker became usable or unusable."""

    def presence_transition(self, room: str, envelope: bytes) -> None:
        """A presence transition this node's own request made (a join, a leave, a
        re-registration, a reaping): once per transition in the cluster, whether or not
        this node receives the room. The console's PRESENCE line."""

    def missed(self, room: str) -> None:
        """This node missed messages of `room` (deaf subscription) beyond what its history
        still holds: its members cannot be brought up to date in place."""


class ClusterListener(Protocol):
    """What the console gives the broker: it receives every node's events and describes
    this node to the others."""

    def cluster_event(self, data: bytes) -> None:
        """Each cluster event (see events.py) published by any node, this one included."""

    def node_info(self) -> dict[str, Any]:
        """A JSON-able description of this node: id, uptime, connections, rooms, memory..."""


class _Nobody:
    """The listener of a broker nothing has attached to yet: takes everything, does nothing."""

    def deliver(self, room: str, envelope: bytes) -> bool:
        return True

    def fan_out(self, room: str, kind: int, key: bytes, wire: bytes) -> None:
        pass

    def broker_state(self, ready: bool, reason: str) -> None:
        pass

    def presence_transition(self, room: str, envelope: bytes) -> None:
        pass

    def missed(self, room: str) -> None:
        pass

    def cluster_event(self, data: bytes) -> None:
        pass

    def node_info(self) -> dict[str, Any]:
        return {}


NOBODY = _Nobody()

History = list[tuple[bytes, bytes]]
"""(id, wire JSON) of kept chat messages, oldest first."""

CHAT_PREFIX = b'{"type":"chat","id":"'
PRESENCE_PREFIX = b'{"type":"presence",'


class BrokerUnavailable(Exception):
    """The broker cannot take this request now; the caller answers `unavailable`."""


class Repeat(bytes):
    """What `submit` answers instead of an id for a chat whose sender already published its
    `cid` in that room within the history window: the wire JSON of that first message (same
    id), for the sender alone. Nothing was published."""

    __slots__ = ()


def dedupe_key(user_id: str, cid: str) -> bytes:
    """The key under which a room remembers which (user, cid) it has published, unambiguous
    whatever either holds."""
    return f"{len(user_id)}:{user_id}{cid}".encode()


def chat_suffix(fields: dict[str, Any]) -> bytes:
    """The part of a chat message after its id: `wire = CHAT_PREFIX + id + suffix`.

    The broker chooses the id (a Redis Stream id in Redis), so the message is serialised
    once without it and the id is spliced in, in Python or in a Lua script alike.
    """
    return b'",' + encode(fields)[1:]


def repeat_id(wire: bytes) -> bytes:
    """The id in a chat message's wire JSON (CHAT_PREFIX + id + suffix)."""
    start = len(CHAT_PREFIX)
    return wire[start : wire.index(b'"', start)]


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
    # stop() takes this node's whole presence out of the cluster at once (or leaves it to
    # the other nodes' reaper): a node that is shutting down need not remove it room by room
    leaves_with_node: bool = False

    def __init__(self, node_id: str, history: int, key_prefix: str = "gochat:") -> None:
        self.node_id = node_id
        self.key_prefix = key_prefix
        self.history_size = history
        self.ready = False
        self.reason = "not started"
        self.listener: BrokerListener = NOBODY
        self.cluster: ClusterListener = NOBODY

    def attach(self, listener: BrokerListener) -> None:
        """Deliver this node's room messages, state and presence news to `listener`."""
        self.listener = listener

    def attach_cluster(self, cluster: ClusterListener) -> None:
        """Hand every node's console events to `cluster`, and ask it about this node."""
        self.cluster = cluster

    def channel(self, room: str) -> str:
        """The name of `room`'s channel (the console shows it; Redis publishes on it)."""
        return f"{self.key_prefix}room:{room}"

    def _set_state(self, ready: bool, reason: str) -> None:
        changed = ready != self.ready
        self.ready, self.reason = ready, reason
        if changed:
            self.listener.broker_state(ready, reason)

    @abstractmethod
    async def start(self) -> None:
        """Begin listening; return without waiting for a backend that is down."""

    @abstractmethod
    async def stop(self, timeout: float | None = None) -> None:
        """Leave cleanly (this node's presence removed) and stop every task; within `timeout`
        seconds when given (what is left of the shutdown grace): what the backend has not
        answered by then is given up."""

    @abstractmethod
    async def subscribe(self, room: str) -> None:
        """Receive `room`'s messages on this node (called when its first local member joins)."""

    @abstractmethod
    async def unsubscribe(self, room: str) -> None:
        """Stop receiving `room` (called when its last local member leaves)."""

    @abstractmethod
    def submit(
        self, room: str, suffix: bytes, dedupe: bytes | None = None
    ) -> bytes | asyncio.Future[bytes]:
        """Start publishing a chat message: give it an id, append it to the room's history
        and deliver it to every subscribed node, atomically. `suffix` is the message
        serialised once without `type` and `id` (`chat_suffix(fields)`): wire =
        CHAT_PREFIX + id + suffix. Returns the id when the message is published already (in
        memory: no future to create and inspect per message), else a future that gets the
        id, or BrokerUnavailable; raises BrokerUnavailable at once when the broker cannot
        take requests.

        With `dedupe` (`dedupe_key(userId, cid)`), in the same atomic step: when the room's
        kept history still holds the message first published under that key, nothing is
        published and the answer is a `Repeat` of that message instead of an id.

        Messages submitted one after another by this node are published in that order, so
        a client's messages keep theirs although its reader does not wait for each.
        """

    async def publish(self, room: str, suffix: bytes, dedupe: bytes | None = None) -> str:
        """`submit` and wait: the message's id (for a `Repeat`, the first message's)."""
        pending = self.submit(room, suffix, dedupe)
        answer = pending if isinstance(pending, bytes) else await pending
        return repeat_id(answer).decode() if isinstance(answer, Repeat) else answer.decode()

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

    @abstractmethod
    async def member_counts(self, rooms: list[str]) -> dict[str, int]:
        """Each of `rooms`' number of members across the cluster (distinct users, what
        `len(members(room))` is), for a page of rooms at once: one round trip in Redis."""

    @abstractmethod
    async def rooms(self) -> dict[str, int]:
        """Every room with a member anywhere in the cluster, with its number of members
        (distinct users), by name."""

    def publish_event(self, data: bytes) -> None:
        """Share one console event with every node; in one process it comes straight back."""
        self.cluster.cluster_event(data)

    def counters(self) -> dict[str, tuple[int, str]]:
        """The broker's own counters for /metrics: name -> (value, what it counts)."""
        return {}

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live node's `node_info` (just this one in a single process)."""
        info = self.cluster.node_info()
        return [{"id": self.node_id, **info, "broker": self.kind, "ready": self.ready}]
