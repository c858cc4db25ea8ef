"""The in-memory broker: one process, nothing to install; same envelopes as Redis."""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict, deque

from ..protocol import Member, presence
from .base import (
    CHAT,
    CHAT_PREFIX,
    Broker,
    BrokerUnavailable,
    History,
    Repeat,
    presence_envelope,
)

log = logging.getLogger("gochat.brokers.memory")

# What the history budget counts besides the wire bytes of each kept message, measured with
# tracemalloc on CPython 3.11 (64-bit): per message its (id, wire) tuple, the id's bytes
# object, the wire's bytes header and its deque slot, 137 bytes; per room holding history
# its record, the deque's first block (64 slots), its users dict, its entries in two dicts
# and its name, about 1,000 bytes (20,000 rooms of 3 short messages: 1,650 bytes traced per
# room, 1,735 counted). Without them a flood of tiny messages to fresh rooms would hold
# several times the budget.
ENTRY_OVERHEAD = 144
ROOM_OVERHEAD = 1024
EVICTION_LOG_EVERY = 1000


class _Room:
    __slots__ = ("cids", "history", "users")

    def __init__(self) -> None:
        self.history: deque[tuple[bytes, bytes]] = deque()
        # dedupe_key(userId, cid) -> the id first published under it; an entry whose
        # message left the history is stale (pruned once there are twice as many as kept)
        self.cids: dict[bytes, bytes] = {}
        # userId -> (name, connection ids): a user is online while the set is non-empty
        self.users: dict[str, tuple[str, set[str]]] = {}


class MemoryBroker(Broker):
    """Rooms in a dict: a ring of recent messages and the present users per room.

    Delivery calls the handler synchronously from `publish`, which keeps one order per room
    (the event loop is single-threaded) and runs the same Hub path as the Redis listener.

    The history of every room together is held within `history_budget` bytes (0: no limit),
    counted as the kept messages' wire bytes plus ENTRY_OVERHEAD each, plus ROOM_OVERHEAD
    per room holding history. Rooms holding history are kept in order of their last publish;
    a publish that goes over the budget evicts the least recently active rooms' whole history
    first, and only when the room published to alone is over it, that room's oldest
    messages. A room with no history and no users is forgotten. A `since` that fell out of
    an evicted history is answered `recovered: false`, as one that fell out of the ring.
    """

    kind = "memory"

    def __init__(
        self,
        node_id: str,
        history: int,
        key_prefix: str = "gochat:",
        history_budget: int = 0,
    ) -> None:
        super().__init__(node_id, history, key_prefix)
        self._rooms: dict[str, _Room] = {}
        self._subscribed: set[str] = set()
        self.history_budget = history_budget
        self._budget = history_budget or sys.maxsize
        # rooms holding history, least recently published to first; _newest is the last
        self._kept: OrderedDict[str, _Room] = OrderedDict()
        self._newest: str | None = None
        self.held_bytes = 0  # counted against the budget, every room together
        self.evicted_rooms = 0  # rooms whose whole history was evicted for the budget
        # one id sequence for the process, so a room forgotten and made again never
        # repeats an id it gave before
        self._last_ms = 0
        self._seq = 0

    @property
    def known_rooms(self) -> int:
        """Rooms this broker holds state for (users or history)."""
        return len(self._rooms)

    async def start(self) -> None:
        self._set_state(True, "in memory")

    async def stop(self, timeout: float | None = None) -> None:
        self._set_state(False, "stopped")

    def _room(self, room: str) -> _Room:
        r = self._rooms.get(room)
        if r is None:
            r = self._rooms[room] = _Room()
        return r

    def _forget_if_empty(self, room: str) -> None:
        r = self._rooms.get(room)
        if r is not None and not r.users and not r.history:
            del self._rooms[room]

    async def subscribe(self, room: str) -> None:
        self._subscribed.add(room)

    async def unsubscribe(self, room: str) -> None:
        self._subscribed.discard(room)
        self._forget_if_empty(room)

    def _deliver(self, room: str, envelope: bytes) -> None:
        if room in self._subscribed:
            self.listener.deliver(room, envelope)

    def _next_id(self) -> bytes:
        # Stream-like ids (ms-seq), increasing within the process (so within a room) and
        # unlikely to repeat across restarts, so a stale `since` from before a restart is
        # reported as not recovered.
        ms = time.time_ns() // 1_000_000
        if ms > self._last_ms:
            self._last_ms, self._seq = ms, 0
        else:
            self._seq += 1
        return f"{self._last_ms}-{self._seq}".encode()

    def _check(self) -> None:
        if not self.ready:
            raise BrokerUnavailable(f"broker {self.reason}")

    def submit(self, room: str, suffix: bytes, dedupe: bytes | None = None) -> bytes:
        # published before it returns (delivered synchronously, in submission order): the id
        self._check()
        if dedupe is not None and self.history_size:
            first = self._first(room, dedupe)
            if first is not None:
                return first
        bid = self._next_id()
        wire = CHAT_PREFIX + bid + suffix
        if self.history_size:
            r = self._rooms.get(room) or self._room(room)
            if dedupe is not None:
                r.cids[dedupe] = bid
                if len(r.cids) > 2 * self.history_size:
                    kept = {msg_id for msg_id, _ in r.history}
                    r.cids = {k: v for k, v in r.cids.items() if v in kept}
            h = r.history
            if len(h) >= self.history_size:  # a full ring: its oldest message makes way
                cost = len(wire) - len(h.popleft()[1])
            else:
                cost = len(wire) + (ENTRY_OVERHEAD if h else ENTRY_OVERHEAD + ROOM_OVERHEAD)
            h.append((bid, wire))
            if room != self._newest:  # a dict move per change of room, no scan
                self._kept[room] = r
                self._kept.move_to_end(room)
                self._newest = room
            self.held_bytes += cost
            if self.held_bytes > self._budget:
                self._evict(room)
        if room in self._subscribed:  # its parts: there is nothing to build or check
            self.listener.fan_out(room, CHAT, bid, wire)
        return bid

    def _first(self, room: str, dedupe: bytes) -> Repeat | None:
        """The message first published under `dedupe` in `room`, while its history holds it."""
        r = self._rooms.get(room)
        first = r.cids.get(dedupe) if r is not None else None
        if r is None or first is None:
            return None
        for msg_id, wire in reversed(r.history):  # a repeat is rare: a scan is fine
            if msg_id == first:
                return Repeat(wire)
        del r.cids[dedupe]
        return None

    def _evict(self, room: str) -> None:
        """Back within the budget after a publish to `room` (the newest in `_kept`): the
        least recently active rooms' whole history first; `room`'s oldest messages only
        when it is alone over the budget (never its newest)."""
        kept = self._kept
        while self.held_bytes > self._budget and len(kept) > 1:
            name, r = kept.popitem(last=False)
            h = r.history
            self.held_bytes -= ROOM_OVERHEAD + ENTRY_OVERHEAD * len(h) + sum(len(w) for _, w in h)
            h.clear()
            r.cids.clear()
            self._forget_if_empty(name)
            self.evicted_rooms += 1
            if self.evicted_rooms % EVICTION_LOG_EVERY == 1:
                log.warning(
                    "history budget of %d bytes reached: %d rooms' history evicted so far "
                    "(least recently active first)",
                    self.history_budget,
                    self.evicted_rooms,
                )
        r = kept[room]
        h = r.history
        while self.held_bytes > self._budget and len(h) > 1:
            self.held_bytes -= len(h.popleft()[1]) + ENTRY_OVERHEAD

    async def history(self, room: str, since: str | None) -> tuple[History, bool | None]:
        r = self._rooms.get(room)
        kept = list(r.history) if r is not None else []
        if since is None:
            return kept, None
        wanted = since.encode()
        for i, (msg_id, _) in enumerate(kept):
            if msg_id == wanted:
                return kept[i + 1 :], True
        return kept, False

    async def presence_add(self, room: str, conn_id: str, user_id: str, name: str) -> None:
        self._check()
        r = self._room(room)
        entry = r.users.get(user_id)
        if entry is None:
            r.users[user_id] = (name, {conn_id})
            envelope = presence_envelope(user_id, presence(user_id, name, room, "online"))
            self._deliver(room, envelope)
            self.listener.presence_transition(room, envelope)
        else:
            entry[1].add(conn_id)

    async def presence_remove(self, room: str, conn_id: str, user_id: str, name: str) -> None:
        r = self._rooms.get(room)
        entry = r.users.get(user_id) if r is not None else None
        if r is None or entry is None or conn_id not in entry[1]:
            return
        entry[1].discard(conn_id)
        if not entry[1]:
            del r.users[user_id]
            envelope = presence_envelope(user_id, presence(user_id, entry[0], room, "offline"))
            self._deliver(room, envelope)
            self.listener.presence_transition(room, envelope)
            self._forget_if_empty(room)

    async def members(self, room: str) -> list[Member]:
        r = self._rooms.get(room)
        if r is None:
            return []
        return [{"userId": uid, "name": name} for uid, (name, _) in r.users.items()]

    async def member_counts(self, rooms: list[str]) -> dict[str, int]:
        found = {room: self._rooms.get(room) for room in rooms}
        return {room: len(r.users) if r is not None else 0 for room, r in found.items()}

    async def rooms(self) -> dict[str, int]:
        return {room: len(r.users) for room, r in sorted(self._rooms.items()) if r.users}
