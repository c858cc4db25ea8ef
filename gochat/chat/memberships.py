"""This node's room memberships: joins, leaves, and each room's broker subscription.

A join answers `joined` with the room's members and history; until then the live messages
of the room are buffered for the joiner (`joining`), so nothing published meanwhile is lost
or sent before it. A room is subscribed at the broker while it has members or joiners.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .. import protocol
from ..brokers.base import CHAT, PRESENCE, Broker, BrokerUnavailable
from ..config import Settings
from ..events import EventTap, loggable
from ..protocol import ErrorCode, ProtocolError, check_room
from .client import Client

log = logging.getLogger(__name__)

# What a joining client may receive before its `joined`: (kind, key, frame)
Buffered = tuple[int, bytes, bytes]


class Memberships:
    """Which local clients are in which room; the only writer of `rooms` and `joining`."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        tap: EventTap,
        send: Callable[[Client, bytes], None],
        push: Callable[[Client, bytes], None],
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.tap = tap
        self._send = send  # an encoded message to one client (Hub.send)
        self._push = push  # a ready frame to one client (Hub.send_frame)
        self.rooms: dict[str, dict[str, Client]] = {}  # subscribed rooms -> joined clients
        self.joining: dict[str, dict[Client, list[Buffered]]] = {}  # room -> joiners' buffers
        self._sub_lock = asyncio.Lock()

    async def join(self, client: Client, room: str, since: str | None = None) -> None:
        check_room(room, "join")
        if client.allowed_rooms is not None and room not in client.allowed_rooms:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, f"not allowed to join {room}", "join")
        if room in client.rooms:  # already a member: answer again, nothing changes
            await self._send_joined(client, room, since)
            return
        if len(client.rooms) + self._joining_count(client) >= self.settings.max_rooms:
            raise ProtocolError(
                ErrorCode.TOO_MANY_ROOMS, f"at most {self.settings.max_rooms} rooms", "join"
            )
        # Until `joined` is sent, live messages for this client are buffered, so nothing
        # published while we read members and history is lost or sent before it.
        buffered: list[Buffered] = []
        self.joining.setdefault(room, {})[client] = buffered
        counted = False
        try:
            async with self._sub_lock:
                if room not in self.rooms:
                    await self.broker.subscribe(room)
                    self.rooms[room] = {}
            try:
                await self.broker.presence_add(room, client.id, client.user_id, client.name)
            except BrokerUnavailable as exc:
                raise ProtocolError.unavailable(exc, "join") from None
            counted = True
            history_ids = await self._send_joined(client, room, since)
        except BaseException:
            self._end_joining(client, room)
            if counted:
                await self._presence_remove(client, room)
            await self._unsubscribe_if_empty(room)
            raise
        self._end_joining(client, room)
        if client.closed:  # went away while we waited
            await self._presence_remove(client, room)
            await self._unsubscribe_if_empty(room)
            return
        for kind, key, frame in buffered:
            if kind == CHAT and key in history_ids:
                continue
            if kind == PRESENCE and key.decode() == client.user_id:
                continue
            self._push(client, frame)
        self.rooms[room][client.id] = client
        client.rooms.add(room)
        self._tap("JOIN", client, room)

    async def _send_joined(self, client: Client, room: str, since: str | None) -> set[bytes]:
        try:
            members = await self.broker.members(room)
            history, recovered = await self.broker.history(room, since)
        except BrokerUnavailable as exc:
            raise ProtocolError.unavailable(exc, "join") from None
        self._send(client, protocol.joined(room, members, [w for _, w in history], recovered))
        return {i for i, _ in history}

    def _joining_count(self, client: Client) -> int:
        return sum(1 for waiting in self.joining.values() if client in waiting)

    def _end_joining(self, client: Client, room: str) -> None:
        waiting = self.joining.get(room)
        if waiting is not None:
            waiting.pop(client, None)
            if not waiting:
                del self.joining[room]

    async def leave(self, client: Client, room: str) -> None:
        check_room(room, "leave")
        if room not in client.rooms:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"not in room {room}", "leave")
        await self.remove(client, room)
        self._send(client, protocol.left(room))

    async def remove(self, client: Client, room: str, node_leaving: bool = False) -> None:
        """Take `client` out of `room`. While the node is leaving the cluster, a broker that
        removes a node's presence as a whole is not asked room by room: on a Redis that
        hangs, each ask would wait its timeout, and the shutdown must end within its grace."""
        client.rooms.discard(room)
        members = self.rooms.get(room)
        if members is not None:
            members.pop(client.id, None)
        if not (node_leaving and self.broker.leaves_with_node):
            await self._presence_remove(client, room)
        await self._unsubscribe_if_empty(room)
        self._tap("LEAVE", client, room)

    def _tap(self, kind: str, client: Client, room: str) -> None:
        """Show a JOIN or LEAVE on the event tap."""
        self.tap.emit(
            kind,
            client.remote,
            room,
            client.user_id,
            client.name,
            room=room,
            user=client.user_id,
            conn=client.id,
        )

    async def _presence_remove(self, client: Client, room: str) -> None:
        try:
            await self.broker.presence_remove(room, client.id, client.user_id, client.name)
        except BrokerUnavailable:
            # the broker drops this node's stale entries when it reconnects
            log.warning(
                "%s presence not removed from %s: broker unavailable", client.id, loggable(room)
            )

    async def _unsubscribe_if_empty(self, room: str) -> None:
        async with self._sub_lock:
            if not self.rooms.get(room, True) and room not in self.joining:
                del self.rooms[room]
                try:
                    await self.broker.unsubscribe(room)
                except BrokerUnavailable:
                    pass  # resubscription after a reconnect covers only rooms with members
