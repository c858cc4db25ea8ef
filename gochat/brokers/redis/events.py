"""The console's event pump: every node's console events through one Redis channel.

Events are queued and published in pipelined batches; the oldest are dropped when Redis
lags (console lines may be lost, chat messages may not). The subscriber hears the channel
and hands each event here, to be given to the console (`cluster.cluster_event`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from ..base import Broker
from .connection import FAILURES, Commands, log

EVENT_QUEUE = 1024  # console events waiting to be published; the oldest are dropped


class EventPump:
    """Publishes this node's console events and delivers every node's to the console."""

    def __init__(self, broker: Broker, commands: Commands, connected: Callable[[], bool]) -> None:
        self._broker = broker  # read only: its cluster listener (the console)
        self._commands = commands
        self._connected = connected  # the subscriber's: no events while it is down
        self._events_out: deque[bytes] = deque(maxlen=EVENT_QUEUE)
        self._events_wake = asyncio.Event()

    def publish(self, data: bytes) -> None:
        """Queue a console event for every node; the oldest is dropped when Redis lags."""
        self._events_out.append(data)
        self._events_wake.set()

    def deliver(self, data: bytes) -> None:
        """An event any node published (this one included), heard by the subscriber."""
        try:
            self._broker.cluster.cluster_event(data)
        except Exception:
            log.exception("event handler failed")

    async def run(self) -> None:
        while True:
            await self._events_wake.wait()
            self._events_wake.clear()
            redis = self._commands.redis
            if redis is None or not self._connected():
                self._events_out.clear()  # console lines may be lost; chat messages may not
                continue
            batch = list(self._events_out)
            self._events_out.clear()
            try:
                async with redis.pipeline(transaction=False) as pipe:
                    for data in batch:
                        pipe.execute_command(
                            self._commands.publish_command, self._commands.events_channel, data
                        )
                    await pipe.execute()
            except FAILURES as exc:
                log.debug("dropped %d console events: %s", len(batch), exc)
