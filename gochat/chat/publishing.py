"""The publish path of a client's chat message: checked, handed to the broker, confirmed.

The reader does not wait for the broker per message (`say`): a client's burst reaches the
broker as one batch, which keeps the order, and every node receives it as one burst.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

from ..brokers.base import CHAT_PREFIX, Broker, BrokerUnavailable, Repeat, chat_suffix, dedupe_key
from ..config import Settings
from ..events import EventTap
from ..protocol import ErrorCode, ProtocolError, check_room
from .client import Client
from .stats import ChatStats

# Chat messages of one client the broker may hold unconfirmed before its reader waits
MAX_IN_FLIGHT = 64


class Publisher:
    """Chat messages from local clients to the broker; refusals become ProtocolError."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        tap: EventTap,
        stats: ChatStats,
        send_error: Callable[[Client, ProtocolError], None],
        send: Callable[[Client, bytes], None],
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.tap = tap
        self.stats = stats
        self.send_error = send_error
        self.send = send

    async def say(self, client: Client, room: str, text: str, cid: str | None = None) -> None:
        """Publish a chat message from `client` to `room`.

        It returns once the broker has the message, not once it is published: the reader
        goes on with the client's next frame meanwhile (the broker keeps the order), so a
        client's burst reaches Redis as one batch and every node as one burst, which the
        Outbox coalesces. An `unavailable` answer comes when the broker gives up on it. A
        client with MAX_IN_FLIGHT messages unconfirmed waits for this one before its next
        frame is read.
        """
        pending = self.say_now(client, room, text, cid)
        if pending is not None and client.unconfirmed > MAX_IN_FLIGHT:
            await asyncio.wait((pending,))

    def say_inline(self, client: Client, room: str, text: str, cid: str | None) -> None:
        """`say_now` for a chat taken in aiohttp's data callback (ws.take_inline), which
        never waits: counted apart, to show how often the shortcut is taken."""
        self.stats.inline += 1
        self.say_now(client, room, text, cid)

    def say_now(
        self, client: Client, room: str, text: str, cid: str | None = None
    ) -> asyncio.Future[bytes] | None:
        """`say` up to the wait: None if the broker has published it already, else the
        broker's pending answer (the reader must wait for it when `client.unconfirmed`
        exceeds MAX_IN_FLIGHT). Raises ProtocolError for a refused message."""
        ref = cid if cid is not None else "chat"
        member = room in client.rooms
        if not member:
            check_room(room, ref)  # a joined room's name was checked by the join
        text = text.strip()
        if not text:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "text: empty", ref)
        if len(text) > self.settings.max_text:
            raise ProtocolError(
                ErrorCode.TOO_LONG, f"text over {self.settings.max_text} characters", ref
            )
        if not member:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"not in room {room}", ref)
        fields: dict[str, Any] = {
            "room": room,
            "userId": client.user_id,
            "name": client.name,
            "text": text,
            "ts": time.time_ns() // 1_000_000,
        }
        dedupe = None
        if cid is not None:
            fields["cid"] = cid
            dedupe = dedupe_key(client.user_id, cid)
        suffix = chat_suffix(fields)  # serialised once: the broker and the tap share it
        try:
            pending = self.broker.submit(room, suffix, dedupe)
        except BrokerUnavailable as exc:
            raise ProtocolError.unavailable(exc, ref) from None
        if isinstance(pending, bytes):  # its id: published already (the in-memory broker)
            self._published(client, room, suffix, pending)
            return None
        client.unconfirmed += 1
        pending.add_done_callback(functools.partial(self._confirmed, client, room, suffix, ref))
        return pending

    def _confirmed(
        self, client: Client, room: str, suffix: bytes, ref: str, done: asyncio.Future[bytes]
    ) -> None:
        """The broker is done with a chat message of `client`: count it, or answer the error."""
        client.unconfirmed -= 1
        exc = done.exception() if not done.cancelled() else BrokerUnavailable("cancelled")
        if exc is not None:
            self.send_error(client, ProtocolError.unavailable(exc, ref))
            return
        self._published(client, room, suffix, done.result())

    def _published(self, client: Client, room: str, suffix: bytes, msg_id: bytes) -> None:
        """A chat message of `client` is published: count it, and show it on the tap. A
        `Repeat` (its cid was published before) goes back to the sender alone."""
        if type(msg_id) is Repeat:
            self.stats.repeated += 1
            self.send(client, msg_id)
            return
        self.stats.published += 1
        if self.tap.active:  # here, not in deliver: once per message, with the sender's address
            wire = CHAT_PREFIX + msg_id + suffix
            self.tap.emit(
                "PUBLISH",
                client.remote,
                self.broker.channel(room),
                wire.decode(),
                room=room,
                user=client.user_id,
                conn=client.id,
            )
