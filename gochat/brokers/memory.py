"""The in-memory broker: one process, nothing to install; same envelopes as Redis."""

from __future__ import annotations

import time
from collections import deque

from ..protocol import Member, presence
from .base import (
    CHAT,
    CHAT_PREFIX,
    Broker,
    BrokerUnavailable,
    History,
    presence_envelope,
)


class _Room:
    __slots__ = ("history", "last_ms", "seq", "users")

    def __init__(self, size: int) -> None:
        self.history: deque[tuple[bytes, bytes]] = deque(maxlen=size)
        self.last_ms = 0
        self.seq = 0
        # userId -> (name, connection ids): a user is online while the set is non-empty
        self.users: dict[str, tuple[str, set[str]]] = {}


class MemoryBroker(Broker):
    """Rooms in a dict: a ring of recent messages and the present users per room.

    Delivery calls the handler synchronously from `publish`, which keeps one order per room
    (the event loop is single-threaded) and runs the same Hub path as the Redis listener.
    """

    kind = "memory"

    def __init__(self, node_id: str, history: int, key_prefix: str = "gochat:") -> None:
        super().__init__(node_id, history, key_prefix)
        self._rooms: dict[str, _Room] = {}
        self._subscribed: set[str] = set()

    async def start(self) -> None:
        self._set_state(True, "in memory")

    async def stop(self) -> None:
        self._set_state(False, "stopped")

    def _room(self, room: str) -> _Room:
        r = self._rooms.get(room)
        if r is None:
            r = self._rooms[room] = _Room(self.history_size)
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

    def _next_id(self, r: _Room) -> str:
        # Stream-like ids (ms-seq), increasing within a room and unlikely to repeat across
        # restarts, so a stale `since` from before a restart is reported as not recovered.
        ms = time.time_ns() // 1_000_000
        if ms > r.last_ms:
            r.last_ms, r.seq = ms, 0
        else:
            r.seq += 1
        return f"{r.last_ms}-{r.seq}"

    def _check(self) -> None:
        if not self.ready:
            raise BrokerUnavailable(f"broker {self.reason}")

    def submit(self, room: str, suffix: bytes) -> bytes:
        # published before it returns (delivered synchronously, in submission order): the id
        self._check()
        r = self._room(room)
        bid = self._next_id(r).encode()
        wire = CHAT_PREFIX + bid + suffix
        if self.history_size:
            r.history.append((bid, wire))
        if room in self._subscribed:  # its parts: there is nothing to build or check
            self.listener.fan_out(room, CHAT, bid, wire)
        return bid

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

    async def members(self, room: str) -> list[Member]:
        r = self._rooms.get(room)
        if r is None:
            return []
        return [{"userId": uid, "name": name} for uid, (name, _) in r.users.items()]

    async def member_counts(self, rooms: list[str]) -> dict[str, int]:
        found = {room: self._rooms.get(room) for room in rooms}
        return {room: len(r.users) if r is not None else 0 for room, r in found.items()}
