"""Presence and node liveness: who is in which room, cluster-wide, and which nodes are alive.

Presence is counted per connection in Redis and its transitions are published by the script
that changes the count, so each `online`/`offline` goes out once for the whole cluster. Each
node keeps a heartbeat key (its info for the console's nodes table); every node reaps the
members of nodes whose heartbeat expired, and re-registers its own presence after a
reconnect or after being reaped.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

from ...protocol import Member
from ..base import Broker, BrokerUnavailable
from .connection import FAILURES, Commands, log, unavailable_on_error

SCAN_COUNT = 1000  # keys Redis looks at per SCAN round trip
_GLOB = re.compile(rb"([*?\[\]\\])")  # special in a SCAN pattern: escaped


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
        self._presence_dirty = False

    # --- requests from the Hub -------------------------------------------------------------

    async def add(self, room: str, conn_id: str, user_id: str, name: str) -> None:
        self._commands.usable()
        self._local[(room, conn_id)] = (user_id, name)
        self._presence_gen += 1
        try:
            with unavailable_on_error("presence"):
                published = await self._commands.scripts["add"](
                    args=[self._commands.prefix, self._broker.node_id, room, conn_id, user_id, name]
                )
        except BrokerUnavailable:
            self._local.pop((room, conn_id), None)
            self._presence_dirty = True  # it may have been applied before the reply was lost
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
                    args=[self._commands.prefix, self._broker.node_id, room, conn_id]
                )
        except BrokerUnavailable:
            self._presence_dirty = True
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
                self._commands.key("presence_names:", room)
            )
        return [{"userId": u.decode(), "name": n.decode()} for u, n in names.items()]

    async def member_counts(self, rooms: list[str]) -> dict[str, int]:
        """Each room's number of members (what len(members(room)) is), in one round trip:
        presence_names:<room> holds one field per user, so HLEN counts users, not
        connections."""
        r = self._commands.usable()
        if not rooms:
            return {}
        with unavailable_on_error("members"):
            async with r.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.hlen(self._commands.key("presence_names:", room))
                counts: list[Any] = await pipe.execute()
        return {room: int(n) for room, n in zip(rooms, counts, strict=True)}

    async def rooms(self) -> dict[str, int]:
        """Every room with members: each has a presence_names:<room> hash, deleted with its
        last member, so the rooms are those keys, found with SCAN (never KEYS, which
        blocks Redis), and counted as member_counts does."""
        r = self._commands.usable()
        prefix = self._commands.key("presence_names:").encode()
        pattern = _GLOB.sub(rb"\\\1", prefix) + b"*"
        with unavailable_on_error("rooms"):
            keys = [bytes(k) async for k in r.scan_iter(match=pattern, count=SCAN_COUNT)]
        names = sorted({k[len(prefix) :].decode(errors="replace") for k in keys})
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
                    self._presence_dirty = True
                dead, published = await self._commands.scripts["reap"](
                    args=[self._commands.prefix, self._broker.node_id]
                )
                self._report(published)
                for node in dead:
                    log.warning("node %s stopped without leaving: its members are offline", node)
                if self._presence_dirty:
                    await self._sync()
            except FAILURES as exc:
                log.debug("maintenance skipped: %s", exc)

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
        """Refresh our heartbeat key; True when Redis did not know this node."""
        added = await self._commands.scripts["heartbeat"](
            args=[
                self._commands.prefix,
                self._broker.node_id,
                self._info_json(ready),
                self.heartbeat_ms,
            ]
        )
        return bool(added)

    async def _sync(self) -> None:
        """Make Redis's record of our members equal to ours (repeated if it moved meanwhile)."""
        for _ in range(5):
            gen = self._presence_gen
            args: list[Any] = [self._commands.prefix, self._broker.node_id]
            for (room, conn), (user, name) in self._local.items():
                args += (room, conn, user, name)
            removed, added, published = await self._commands.scripts["sync"](args=args)
            self._report(published)
            if removed or added:
                log.info("presence re-registered: %d removed, %d added", removed, added)
            if gen == self._presence_gen:
                self._presence_dirty = False
                return
        self._presence_dirty = True  # still changing: the next maintenance round retries

    async def leave(self) -> None:
        """A clean goodbye: this node's members leave Redis, its heartbeat goes. A failure is
        the caller's to report (the reaper of another node removes what is left)."""
        if self._commands.redis is None:
            return
        await self._commands.scripts["leave"](args=[self._commands.prefix, self._broker.node_id])

    def forget(self) -> None:
        """Stopped: nothing of this node's presence is registered any more."""
        self._local.clear()

    # --- the console's nodes table ---------------------------------------------------------

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node whose heartbeat is alive (just this one while Redis is unreachable)."""
        own = json.loads(self._info_json())
        redis = self._commands.redis
        if redis is None or not self._broker.ready:
            return [own]
        try:
            ids: set[Any] = await redis.smembers(self._commands.key("nodes"))
            keys = [self._commands.key("node:") + i.decode() for i in sorted(ids)]
            values: list[Any] = await redis.mget(keys) if keys else []
        except FAILURES:
            return [own]
        found = [json.loads(v) for v in values if v is not None]
        return [own if n.get("id") == self._broker.node_id else n for n in found] or [own]
