"""Presence and node liveness: who is in which room, cluster-wide, and which nodes are alive.

Presence is counted per connection in Redis and its transitions are published by the script
that changes the count, so each `online`/`offline` goes out once for the whole cluster. Every
presence script touches one room's keys (one slot on a Redis Cluster). Each node keeps a
heartbeat in the node table (its info for the console's nodes table); every node marks the
nodes whose heartbeat expired as dead and removes their members room by room, and a node
re-registers its own presence after a reconnect or after being reaped.

A node's entries in a room are stamped with its *incarnation*, a random token it takes each
time it registers: a reaper removes only the dead incarnation's entries, so a node reaped
while alive (it could not reach Redis for a while) and already registered again keeps them.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Callable
from typing import Any

from ...protocol import Member
from ..base import Broker, BrokerUnavailable
from .connection import FAILURES, Commands, log, unavailable_on_error

SCAN_COUNT = 1000  # keys Redis looks at per SCAN round trip
_GLOB = re.compile(r"([*?\[\]\\])")  # special in a SCAN pattern: escaped


def _glob(text: str) -> str:
    return _GLOB.sub(r"\\\1", text)


def _incarnation() -> str:
    return secrets.token_hex(8)


class Presence:
    """This node's presence in Redis, its heartbeat and the reaper of dead nodes."""

    def __init__(
        self, broker: Broker, commands: Commands, ttl: float, connected: Callable[[], bool]
    ) -> None:
        self._broker = broker  # read only: its id, kind, readiness, listener and cluster
        self._commands = commands
        self._connected = connected  # the subscriber's: maintenance waits for a reconnect
        self.ttl = ttl
        # A heartbeat outlives 3 missed refreshes; a survivor's reaper sees it gone within one
        # more period, so a crashed node's members go offline 1/2..5/6 of the TTL after.
        self.heartbeat_ms = max(int(ttl * 2000 / 3), 100)
        self.maintain_every = max(ttl / 6, 0.05)
        # What this node has told Redis about its presence: (room, conn) -> (userId, name).
        # Kept here rather than asked of the Hub, because a joining connection is counted
        # before the Hub lists it as a member.
        self._local: dict[tuple[str, str], tuple[str, str]] = {}
        self._presence_gen = 0
        # Rooms where Redis's record of this node may differ from _local (a request whose
        # answer was lost): the next sync makes them agree.
        self._dirty_rooms: set[str] = set()
        # Registered under a new incarnation, not yet synced: this node may have entries
        # (of a previous run, or of before it was reaped) in rooms it no longer knows.
        self._full_sync = False
        self.incarnation = _incarnation()
        self._next_incarnation = _incarnation()

    # --- keys -------------------------------------------------------------------------------

    def _room_keys(self, room: str, node: str | None = None) -> list[str]:
        """The presence scripts' keys: the room's three hashes and one node's entries."""
        key = self._commands.room_key
        mine = key("presence_node", room) + ":" + (node or self._broker.node_id)
        users, names = key("presence_users", room), key("presence_names", room)
        return [key("presence", room), users, names, mine]

    def _room_args(self, room: str) -> list[Any]:
        return [self._commands.publish_command, self._commands.room_channel(room), room]

    # --- requests from the Hub -------------------------------------------------------------

    async def add(self, room: str, conn_id: str, user_id: str, name: str) -> None:
        self._commands.usable()
        self._local[(room, conn_id)] = (user_id, name)
        self._presence_gen += 1
        try:
            with unavailable_on_error("presence"):
                published = await self._commands.scripts["add"](
                    keys=self._room_keys(room),
                    args=[*self._room_args(room), conn_id, user_id, name, self.incarnation],
                )
        except BrokerUnavailable:
            self._local.pop((room, conn_id), None)
            self._dirty_rooms.add(room)  # it may have been applied before the reply was lost
            raise
        self._report(published)

    async def remove(self, room: str, conn_id: str) -> None:
        # forgotten here at once: the next sync removes it from Redis if this call cannot
        if self._local.pop((room, conn_id), None) is None:
            return
        self._presence_gen += 1
        try:
            self._commands.usable()
            with unavailable_on_error("presence"):
                published = await self._commands.scripts["remove"](
                    keys=self._room_keys(room), args=[*self._room_args(room), conn_id]
                )
        except BrokerUnavailable:
            self._dirty_rooms.add(room)
            raise
        self._report(published)

    def _report(self, published: list[bytes]) -> None:
        """Hand the transitions a presence script published to the Hub's console line."""
        for i in range(0, len(published) - 1, 2):
            self._broker.listener.presence_transition(
                published[i].decode(errors="replace"), published[i + 1]
            )

    async def members(self, room: str) -> list[Member]:
        r = self._commands.usable()
        with unavailable_on_error("members"):
            names: dict[bytes, bytes] = await r.hgetall(  # type: ignore[assignment]
                self._commands.room_key("presence_names", room)
            )
        return [{"userId": u.decode(), "name": n.decode()} for u, n in names.items()]

    async def member_counts(self, rooms: list[str]) -> dict[str, int]:
        """Each room's number of members (what len(members(room)) is), in one round trip:
        presence_names:{room} holds one field per user, so HLEN counts users, not
        connections. (On a cluster: one round trip to each master, in parallel.)"""
        r = self._commands.usable()
        if not rooms:
            return {}
        with unavailable_on_error("members"):
            async with r.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.hlen(self._commands.room_key("presence_names", room))
                counts: list[Any] = await pipe.execute()
        return {room: int(n) for room, n in zip(rooms, counts, strict=True)}

    async def _scan_rooms(self, kind: str, suffix: str = "") -> set[str]:
        """The rooms that have a `{kind}:{room}{suffix}` key, found with SCAN (never KEYS,
        which blocks Redis; on a cluster, every master)."""
        r = self._commands.redis
        if r is None:
            raise BrokerUnavailable("stopped")
        head = self._commands.key(kind, ":{")
        tail = "}" + suffix
        pattern = _glob(head) + "*" + _glob(tail)
        rooms: set[str] = set()
        async for k in r.scan_iter(match=pattern.encode(), count=SCAN_COUNT):
            key = bytes(k).decode(errors="replace")
            if key.startswith(head) and key.endswith(tail):
                room = key[len(head) : len(key) - len(tail)]
                if room and "}" not in room:  # another node's key whose id ends like ours
                    rooms.add(room)
        return rooms

    async def rooms(self) -> dict[str, int]:
        """Every room with members: each has a presence_names:{room} hash, deleted with its
        last member, so the rooms are those keys, counted as member_counts does."""
        self._commands.usable()
        with unavailable_on_error("rooms"):
            names = sorted(await self._scan_rooms("presence_names"))
        counts = await self.member_counts(names)
        return {room: n for room, n in counts.items() if n > 0}

    # --- heartbeat, reaper, presence re-registration ---------------------------------------

    async def run(self) -> None:
        """Every TTL/6: refresh our heartbeat, reap dead nodes, repair our presence."""
        while True:
            await asyncio.sleep(self.maintain_every)
            if not self._connected():
                continue  # the listener registers everything when it reconnects
            try:
                if await self._heartbeat():
                    log.warning("this node had been reaped; registering its presence again")
                await self._reap()
                if self._dirty_rooms or self._full_sync:
                    await self._sync()
            except FAILURES as exc:
                log.debug("maintenance skipped: %s", exc)

    async def _reap(self) -> None:
        """Mark the nodes whose heartbeat expired as dead and remove their members, room by
        room (each `offline` published once: the room's script decides). A reaper that fails
        half-way leaves the node marked: the next round, on any node, goes on."""
        node_keys = self._commands.node_keys()
        marked, dead = await self._commands.scripts["reap"](
            keys=node_keys, args=[self._broker.node_id]
        )
        for node in marked:
            log.warning("node %s stopped without leaving: its members are offline", node.decode())
        for raw_node, inc in dead:
            node = raw_node.decode()
            rooms = await self._scan_rooms("presence_node", ":" + node)
            calls = [(self._room_keys(room, node), [*self._room_args(room), inc]) for room in rooms]
            for published in await self._commands.run_scripts("drop", calls):
                self._report(published)
            await self._commands.scripts["reaped"](keys=node_keys, args=[node, inc])

    async def register(self) -> None:
        """After a (re)connect: heartbeat, then make Redis's presence for us match ours."""
        await self._heartbeat(ready=True)  # what the node is once this returns
        await self._sync()

    def _info_json(self, ready: bool | None = None) -> bytes:
        broker = self._broker
        info = broker.cluster.node_info()
        ready = broker.ready if ready is None else ready
        body = {"id": broker.node_id, **info, "broker": broker.kind, "ready": ready}
        return json.dumps(body, default=str, separators=(",", ":")).encode()

    async def _heartbeat(self, ready: bool | None = None) -> bool:
        """Refresh our heartbeat; True when the node table did not hold this incarnation
        (first start, reaped, Redis lost it): we now go by a new one, synced in full."""
        added = await self._commands.scripts["heartbeat"](
            keys=self._commands.node_keys(),
            args=[
                self._broker.node_id,
                self.incarnation,
                self._next_incarnation,
                self._info_json(ready),
                self.heartbeat_ms,
            ],
        )
        if not added:
            return False
        self.incarnation, self._next_incarnation = self._next_incarnation, _incarnation()
        self._full_sync = True
        return True

    async def _sync(self) -> None:
        """Make Redis's record of our members equal to ours, room by room (repeated if it
        moved meanwhile). After a new incarnation, every room where Redis holds entries of
        this node (SCAN) is synced too, which removes what we no longer have."""
        for _ in range(5):
            gen = self._presence_gen
            full = self._full_sync
            wanted: dict[str, list[Any]] = {room: [] for room in self._dirty_rooms}
            for (room, conn), (user, name) in self._local.items():
                wanted.setdefault(room, []).extend((conn, user, name))
            if full:
                for room in await self._scan_rooms("presence_node", ":" + self._broker.node_id):
                    wanted.setdefault(room, [])
            calls = [
                (self._room_keys(room), [*self._room_args(room), self.incarnation, *members])
                for room, members in wanted.items()
            ]
            removed = added = 0
            for r, a, published in await self._commands.run_scripts("sync", calls):
                removed, added = removed + r, added + a
                self._report(published)
            if removed or added:
                log.info("presence re-registered: %d removed, %d added", removed, added)
            if gen == self._presence_gen:
                self._dirty_rooms.clear()
                if full:
                    self._full_sync = False
                return
        # still changing: the next maintenance round retries
        self._dirty_rooms.update(room for room, _ in self._local)

    async def leave(self) -> None:
        """A clean goodbye: this node's members leave Redis room by room, then the node
        leaves the table. A failure is the caller's to report (the reaper of another node
        removes what is left once the heartbeat expires)."""
        if self._commands.redis is None:
            return
        rooms: set[str] = {room for room, _ in self._local} | self._dirty_rooms
        if self._full_sync:
            rooms |= await self._scan_rooms("presence_node", ":" + self._broker.node_id)
        calls = [(self._room_keys(room), [*self._room_args(room), ""]) for room in rooms]
        await self._commands.run_scripts("drop", calls)
        await self._commands.scripts["reaped"](
            keys=self._commands.node_keys(), args=[self._broker.node_id, self.incarnation]
        )

    def forget(self) -> None:
        """Stopped: nothing of this node's presence is registered any more."""
        self._local.clear()
        self._dirty_rooms.clear()

    # --- the console's nodes table ---------------------------------------------------------

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node whose heartbeat is alive (just this one while Redis is unreachable)."""
        own = json.loads(self._info_json())
        redis = self._commands.redis
        if redis is None or not self._broker.ready:
            return [own]
        try:
            values: list[Any] = await self._commands.scripts["nodes"](
                keys=self._commands.node_keys()
            )
        except FAILURES:
            return [own]
        found = [json.loads(v) for v in values if v is not None]
        found.sort(key=lambda n: str(n.get("id")))
        return [own if n.get("id") == self._broker.node_id else n for n in found] or [own]
