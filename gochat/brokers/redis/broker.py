"""The Redis broker: the facade the Hub and the console talk to.

It owns the command connections, the start and stop of the background tasks and the
readiness, and hands each request to the part whose job it is:

    subscriber.py  the pub/sub connection, the listener, replay after a reconnect
    publisher.py   group commit of chat messages (the publish script, pipelined)
    presence.py    presence, the node's heartbeat, reaping dead nodes, the nodes table
    events.py      the console's events channel
    history.py     reading the rooms' streams
    connection.py  the command connections, key names, what a failure means
    scripts.py     the Lua scripts (and the table of keys in its docstring)
"""

from __future__ import annotations

import asyncio
from typing import Any

from ...config import Settings
from ...protocol import Member
from ..base import Broker, History
from . import history
from .connection import (
    COMMAND_TIMEOUT,
    FAILURES,
    Client,
    Commands,
    cancel_all,
    log,
    unavailable_on_error,
)
from .events import EventPump
from .presence import Presence
from .publisher import Publisher
from .subscriber import Subscriber


class RedisBroker(Broker):
    """Fan-out, history and presence through one Redis shared by every node."""

    kind = "redis"
    leaves_with_node = True  # the leave script, or the reaper once the heartbeat expires

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.node_id, settings.history, settings.key_prefix)
        if not settings.redis_url:
            raise ValueError("RedisBroker needs REDIS_URL")
        self.url = settings.redis_url
        self.prefix = settings.key_prefix
        self.ttl = settings.presence_ttl
        self.commands = Commands(self, self.url)
        self.publisher = Publisher(self.commands, self.history_size, settings.history_ttl)
        self.presence = Presence(self, self.commands, self.ttl, lambda: self.subscriber.connected)
        self.events = EventPump(self, self.commands, lambda: self.subscriber.connected)
        self.subscriber = Subscriber(
            self,
            self.commands,
            set_state=self._set_state,
            register=self.presence.register,
            on_event=self.events.deliver,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def channel(self, room: str) -> str:
        return self.commands.room_channel(room).decode()

    @property
    def cluster_mode(self) -> bool:
        """Whether REDIS_URL is a node of a Redis Cluster (known once connected)."""
        return bool(self.commands.cluster)

    # --- what the tests and the console read -----------------------------------------------

    @property
    def _redis(self) -> Client | None:
        """The command client (None before start and after stop)."""
        return self.commands.redis

    @property
    def _scripts(self) -> dict[str, Any]:
        return self.commands.scripts

    @property
    def replayed(self) -> int:
        """Chat messages recovered from streams after a resubscription."""
        return self.subscriber.replayed

    @property
    def duplicates(self) -> int:
        """Chat messages dropped because their id was not newer."""
        return self.subscriber.duplicates

    @property
    def gaps(self) -> int:
        """Resubscriptions that found messages trimmed before they were replayed."""
        return self.subscriber.gaps

    @property
    def future_ids(self) -> int:
        """Chat ids received too far ahead of Redis's clock to be real (forged): delivered,
        but never allowed to move the replay mark."""
        return self.subscriber.future_ids

    @property
    def publish_round_trips(self) -> int:
        return self.publisher.round_trips

    def counters(self) -> dict[str, tuple[int, str]]:
        return {
            "replayed": (
                self.replayed,
                "Chat messages recovered from streams after a resubscription",
            ),
            "duplicates": (self.duplicates, "Chat messages dropped because their id was not newer"),
            "gaps": (self.gaps, "Resubscriptions that found messages trimmed before replay (1013)"),
            "future_ids": (self.future_ids, "Chat ids too far ahead of Redis's clock (forged)"),
            "publish_round_trips": (self.publish_round_trips, "Publish pipelines sent to Redis"),
        }

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.subscriber.open()
        self._set_state(False, "connecting to redis")
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.subscriber.run(), name="redis-listener"),
            loop.create_task(self.presence.run(), name="redis-heartbeat"),
            loop.create_task(self.events.run(), name="redis-events"),
        ]
        # Give a reachable Redis a moment so the node starts ready; an absent one does not
        # hold up the start (the listener keeps trying in the background).
        await self.subscriber.first_attempt(COMMAND_TIMEOUT + 1)

    async def stop(self, timeout: float | None = None) -> None:
        """Leave the cluster and close every connection. What Redis has not answered within
        `timeout` (a hung Redis) is given up: this node's presence is then left to the other
        nodes' reaper (its heartbeat expires within GOCHAT_PRESENCE_TTL)."""
        self.commands.refuse()
        await cancel_all(self._tasks)
        self._tasks = []
        try:
            async with asyncio.timeout(timeout):
                await self.publisher.drain()
                await self.subscriber.drop()
                await self.presence.leave()
        except FAILURES as exc:  # TimeoutError too: the deadline passed
            log.warning(
                "stopped without leaving the cluster (redis: %s): this node's presence is "
                "left to the other nodes' reaper",
                str(exc) or "no answer within the shutdown grace",
            )
            # publishes still waiting for Redis: their senders are gone (Publisher.drain's
            # own cancel was cut short by the deadline)
            await self.publisher.abort()
        await self.commands.close()
        await self.subscriber.close()
        self.presence.forget()
        self._set_state(False, "stopped")

    # --- requests from the Hub -------------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        await self.subscriber.subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        await self.subscriber.unsubscribe(room)

    def submit(
        self, room: str, suffix: bytes, dedupe: bytes | None = None
    ) -> asyncio.Future[bytes]:
        """Queue a chat message for the publish script; see Publisher.submit."""
        return self.publisher.submit(room, suffix, dedupe)

    async def history(self, room: str, since: str | None) -> tuple[History, bool | None]:
        r = self.commands.usable()
        with unavailable_on_error("history"):
            return await history.read(
                r, self.commands.room_key("history", room), self.history_size, since
            )

    async def presence_add(self, room: str, conn_id: str, user_id: str, name: str) -> None:
        await self.presence.add(room, conn_id, user_id, name)

    async def presence_remove(self, room: str, conn_id: str, user_id: str, name: str) -> None:
        await self.presence.remove(room, conn_id)

    async def members(self, room: str) -> list[Member]:
        return await self.presence.members(room)

    async def member_counts(self, rooms: list[str]) -> dict[str, int]:
        """Every room's member count in one pipelined round trip."""
        return await self.presence.member_counts(rooms)

    async def rooms(self) -> dict[str, int]:
        """Every room with members, cluster-wide (a SCAN of the presence keys)."""
        return await self.presence.rooms()

    # --- console hooks ---------------------------------------------------------------------

    def publish_event(self, data: bytes) -> None:
        """Queue a console event for every node; the oldest is dropped when Redis lags."""
        self.events.publish(data)

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node whose heartbeat is alive (just this one while Redis is unreachable)."""
        return await self.presence.nodes()
