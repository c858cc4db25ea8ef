"""The Hub: this node's connections, their rooms, presence transitions, publish and deliver.

The Hub raises `ProtocolError` for requests it refuses (ws.py turns them into `error`
frames), never awaits a client (frames go through the Outbox), and reports every state
change to the event tap.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from .. import protocol
from ..brokers.base import (
    CHAT,
    CHAT_PREFIX,
    PRESENCE,
    PRESENCE_PREFIX,
    Broker,
    BrokerUnavailable,
    chat_suffix,
    split_envelope,
)
from ..config import Settings
from ..events import EventTap, loggable
from ..protocol import CloseCode, ErrorCode, ProtocolError, check_room
from .client import Client
from .outbox import Outbox, text_frame
from .stats import ChatStats

log = logging.getLogger(__name__)

# What a joining client may receive before its `joined`: (kind, key, frame)
Buffered = tuple[int, bytes, bytes]

# How the wire JSON of each envelope kind starts (see Hub.deliver)
WIRE_PREFIX = {CHAT: CHAT_PREFIX, PRESENCE: PRESENCE_PREFIX}
# Chat messages of one client the broker may hold unconfirmed before its reader waits
MAX_IN_FLIGHT = 64
BAD_ENVELOPE_LOG_EVERY = 1000  # after the first, log one malformed message in this many


class Hub:
    """Tracks local clients and rooms; the single place every state change passes."""

    def __init__(self, settings: Settings, broker: Broker, tap: EventTap) -> None:
        self.settings = settings
        self.broker = broker
        self.tap = tap
        self.node_id = settings.node_id
        self.started_at = time.time()
        self.clients: dict[str, Client] = {}
        self.rooms: dict[str, dict[str, Client]] = {}  # subscribed rooms -> joined clients
        self._joining: dict[str, dict[Client, list[Buffered]]] = {}
        self._sub_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._seq = 0
        self.per_ip: Counter[str] = Counter()
        self.outbox = Outbox(
            settings.send_buffer_bytes, self._overflow, settings.write_timeout, self._stuck
        )
        self.stats = ChatStats()
        self.room_msgs: Counter[str] = Counter()  # chat messages delivered per local room
        # called with each chat message's wire JSON once it is handed to members (metrics)
        self._on_fanout: Callable[[bytes], None] | None = None
        self.closing = False
        broker.attach(self)  # the Hub is the broker's listener (brokers.base.BrokerListener)

    # --- connections ---------------------------------------------------------------------

    def next_conn_id(self) -> str:
        self._seq += 1
        return f"{self.node_id}/{self._seq}"

    def connect(self, client: Client) -> None:
        """Register a new connection and greet it."""
        self.clients[client.id] = client
        ip = client.remote.rsplit(":", 1)[0]
        self.per_ip[ip] += 1
        self.stats.connections += 1
        self.send(client, protocol.welcome(client.user_id, client.name, self.node_id))
        self.tap.emit(
            "CONNECT", client.remote, client.id, client.user_id, conn=client.id, user=client.user_id
        )

    async def disconnect(self, client: Client, code: int | None = None) -> None:
        """Forget a connection: leave its rooms (presence `offline` where it was the last)."""
        if self.clients.pop(client.id, None) is None:
            return
        client.mark_closed(code)
        ip = client.remote.rsplit(":", 1)[0]
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
        self.stats.messages_in_closed += client.msgs_in
        for room in list(client.rooms):
            await self._remove_member(client, room)
        self.tap.emit(
            "DISCONNECT",
            client.remote,
            client.id,
            str(client.close_code or ""),
            conn=client.id,
            user=client.user_id,
        )

    def send(self, client: Client, payload: bytes) -> None:
        """Send one encoded message to one client (never awaits)."""
        self.outbox.push(client, text_frame(payload))

    def send_frame(self, client: Client, frame: bytes) -> None:
        """Queue one ready WebSocket frame (a ping, a pong) behind what is queued already."""
        self.outbox.push(client, frame)

    def flush(self) -> None:
        """Write what is queued now rather than at the end of this tick."""
        self.outbox.flush()

    def send_error(self, client: Client, err: ProtocolError) -> None:
        self.stats.errors[err.code.value] += 1
        self.send(client, protocol.error(err.code, err.message, err.ref))
        self.tap.emit(
            "ERROR", client.remote, err.code.value, err.message, conn=client.id, user=client.user_id
        )

    def drop(self, client: Client, code: int, reason: str) -> None:
        """Close a connection from the server side (slow consumer, kick, policy)."""
        if client.closed:
            return
        client.mark_closed(code)
        self.outbox.discard(client)
        self.spawn(self._close(client, code, reason))

    def abort_dead(self, client: Client) -> None:
        """Abort a connection that answered no ping (heartbeat.py); its handler then tells
        the Hub, like any connection that ends."""
        self.stats.heartbeat_aborts += 1
        client.abort()

    async def _close(self, client: Client, code: int, reason: str) -> None:
        ws = client.ws
        if ws is None or ws.closed:
            return
        # drain=False: a slow consumer's buffer may never drain. The connection's handler
        # aborts the transport if the close frame is still unsent after the grace period.
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(
                ws.close(code=code, message=reason.encode()[:120], drain=False),
                timeout=max(self.settings.shutdown_grace, 0.5),
            )

    def _overflow(self, client: Client) -> None:
        self.stats.slow_consumer_closes += 1
        self._too_slow(client, "slow_consumer", "slow consumer")

    def _stuck(self, client: Client) -> None:
        self.stats.write_timeout_closes += 1
        self._too_slow(client, "write_timeout", "write timeout")

    def _too_slow(self, client: Client, counter: str, reason: str) -> None:
        """Close a client the Outbox cannot write to fast enough: 1013, tapped."""
        log.info("%s %s: %d bytes unsent", client.id, reason, client.buffered_bytes())
        self.tap.emit(
            "ERROR", client.remote, counter, "closed 1013", conn=client.id, user=client.user_id
        )
        self.drop(client, CloseCode.TRY_AGAIN, reason)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a coroutine the Hub keeps and awaits on shutdown (nothing fire-and-forget)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- rooms ---------------------------------------------------------------------------

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
        self._joining.setdefault(room, {})[client] = buffered
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
            self.outbox.push(client, frame)
        self.rooms[room][client.id] = client
        client.rooms.add(room)
        self.tap.emit(
            "JOIN",
            client.remote,
            room,
            client.user_id,
            room=room,
            user=client.user_id,
            conn=client.id,
        )

    async def _send_joined(self, client: Client, room: str, since: str | None) -> set[bytes]:
        try:
            members = await self.broker.members(room)
            history, recovered = await self.broker.history(room, since)
        except BrokerUnavailable as exc:
            raise ProtocolError.unavailable(exc, "join") from None
        self.send(client, protocol.joined(room, members, [w for _, w in history], recovered))
        return {i for i, _ in history}

    def _joining_count(self, client: Client) -> int:
        return sum(1 for waiting in self._joining.values() if client in waiting)

    def _end_joining(self, client: Client, room: str) -> None:
        waiting = self._joining.get(room)
        if waiting is not None:
            waiting.pop(client, None)
            if not waiting:
                del self._joining[room]

    async def leave(self, client: Client, room: str) -> None:
        check_room(room, "leave")
        if room not in client.rooms:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"not in room {room}", "leave")
        await self._remove_member(client, room)
        self.send(client, protocol.left(room))

    async def _remove_member(self, client: Client, room: str) -> None:
        client.rooms.discard(room)
        members = self.rooms.get(room)
        if members is not None:
            members.pop(client.id, None)
        await self._presence_remove(client, room)
        await self._unsubscribe_if_empty(room)
        self.tap.emit(
            "LEAVE",
            client.remote,
            room,
            client.user_id,
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
            if not self.rooms.get(room, True) and room not in self._joining:
                del self.rooms[room]
                try:
                    await self.broker.unsubscribe(room)
                except BrokerUnavailable:
                    pass  # resubscription after a reconnect covers only rooms with members

    # --- messages ------------------------------------------------------------------------

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
        if cid is not None:
            fields["cid"] = cid
        suffix = chat_suffix(fields)  # serialised once: the broker and the tap share it
        try:
            pending = self.broker.submit(room, suffix)
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
        """A chat message of `client` is published: count it, and show it on the tap."""
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

    def deliver(self, room: str, envelope: bytes) -> bool:
        """Broker callback: hand one room message to every local member, framed once.

        What arrives from Redis is checked cheaply before it reaches a client: a known kind,
        wire JSON that starts as that kind's messages do and ends with `}`, valid UTF-8
        (a text frame must be). About 0.2 µs per message per node, where json.loads would be
        3 µs. It keeps out accidents (a truncated payload, another program on our channel);
        whoever can PUBLISH to our Redis can still send a well-formed fake, and could do
        worse anyway, so it is not meant to stop them.
        """
        try:
            kind, key, wire = split_envelope(envelope)
            if not (wire.startswith(WIRE_PREFIX[kind]) and wire.endswith(b"}")):
                raise ValueError("not a message of its kind")
            if not wire.isascii():
                wire.decode()  # UnicodeDecodeError is a ValueError
        except (ValueError, KeyError):
            self._bad_envelope(room, envelope)
            return False
        self.fan_out(room, kind, key, wire)
        return True

    def fan_out(self, room: str, kind: int, key: bytes, wire: bytes) -> None:
        """Hand one room message to every local member, framed once: what `deliver` does
        after its checks, and what the in-memory broker calls for a message this process
        made itself (there is no envelope to check)."""
        frame = text_frame(wire)
        members = self.rooms.get(room)
        if members:
            if kind == CHAT:
                self.outbox.push_all(members.values(), frame)
            elif kind == PRESENCE:
                user_id = key.decode()
                others = [c for c in members.values() if c.user_id != user_id]
                self.outbox.push_all(others, frame)
        waiting = self._joining.get(room)
        if waiting:
            for buffered in waiting.values():
                buffered.append((kind, key, frame))
        self.stats.delivered += 1
        if kind == CHAT:
            self.room_msgs[room] += 1
            if self._on_fanout is not None:
                self._on_fanout(wire)

    def on_fanout(self, observe: Callable[[bytes], None] | None) -> None:
        """Call `observe` with each chat message's wire JSON once it is handed to members."""
        self._on_fanout = observe

    @property
    def frames_out(self) -> int:
        """WebSocket frames written to clients since start."""
        return self.outbox.frames

    @property
    def socket_writes(self) -> int:
        """Socket writes that carried them (fewer than frames: coalescing)."""
        return self.outbox.writes

    def backlogged(self) -> int:
        """Connections with unsent bytes being timed (GOCHAT_WRITE_TIMEOUT)."""
        return self.outbox.backlogged()

    def room_message_counts(self) -> dict[str, int]:
        """Chat messages delivered so far per room this node is in (a copy); the rooms it
        left are forgotten here."""
        counts = self.room_msgs
        for room in [r for r in counts if r not in self.rooms]:
            del counts[room]
        return dict(counts)

    def _bad_envelope(self, room: str, envelope: bytes) -> None:
        self.stats.bad_envelopes += 1
        count = self.stats.bad_envelopes
        if count == 1 or count % BAD_ENVELOPE_LOG_EVERY == 0:
            log.warning(
                "dropped a malformed broker message on %r (%d so far): %r",
                room[:64],
                count,
                envelope[:80],
            )

    def presence_transition(self, room: str, envelope: bytes) -> None:
        """Broker callback: a presence transition this node made, for the console.

        Reported by the node whose request made it rather than by every node that delivers
        it, so a cluster console shows one line per transition. That node may not receive
        the room at all (its last member there just left, or it reaped another node's).
        """
        if not self.tap.active:
            return
        try:
            _, key, wire = split_envelope(envelope)
        except ValueError:
            return
        self.tap.emit(
            "PRESENCE",
            self.node_id,
            self.broker.channel(room),
            wire.decode(errors="replace"),
            room=room,
            user=key.decode(errors="replace"),
        )

    def missed(self, room: str) -> None:
        """Broker callback: this node missed messages of `room` that it cannot replay. Its
        members reconnect and rejoin with `since`, so each is told `recovered: false`
        instead of living with a silent hole."""
        members = self.rooms.get(room)
        for client in list(members.values()) if members else ():
            self.stats.resync_closes += 1
            self.drop(client, CloseCode.TRY_AGAIN, "messages missed: rejoin with since")

    def broker_state(self, ready: bool, reason: str) -> None:
        """Broker callback: it became usable or unusable."""
        log.log(
            logging.INFO if ready or self.closing else logging.WARNING,
            "broker %s: %s",
            "up" if ready else "down",
            reason,
        )
        if ready:
            self.stats.broker_ups += 1
        self.tap.emit("BROKER_UP" if ready else "BROKER_DOWN", self.node_id, reason)

    # --- shutdown ------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Close every client with 1001 and wait for every task the Hub started, all within
        GOCHAT_SHUTDOWN_GRACE.

        Clients go in batches of GOCHAT_SHUTDOWN_BATCH spread over the first half of the
        grace period (at most 1 s apart), so the clients of a big node do not all reconnect
        in the same instant; whatever was queued for a client is written before its close.
        """
        self.closing = True
        loop = asyncio.get_running_loop()
        grace = self.settings.shutdown_grace
        deadline = loop.time() + grace
        size = self.settings.shutdown_batch
        clients = list(self.clients.values())
        batches = [clients[i : i + size] for i in range(0, len(clients), size)]
        gap = min(1.0, grace / 2 / (len(batches) - 1)) if len(batches) > 1 else 0.0
        for n, batch in enumerate(batches):
            if n:
                await asyncio.sleep(gap)
            self.outbox.flush()
            for client in batch:
                self.drop(client, CloseCode.GOING_AWAY, "server shutting down")
        self.outbox.flush()
        self.outbox.stop()
        if self._tasks:
            timeout = max(0.1, deadline - loop.time())
            done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
