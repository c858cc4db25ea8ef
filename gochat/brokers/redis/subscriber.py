"""The subscriber: this node's one pub/sub connection and its listener loop.

Subscribed to a room's channel only while the node has members there, plus the node's own
control channel (a liveness probe) and the console's events channel. After a reconnect it
replays from each room's stream what was published while it was deaf, drops what it has
delivered already, and tells the Hub of a room whose missed messages were trimmed (a gap).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...events import loggable
from ..base import Broker, chat_envelope
from . import history
from .connection import FAILURES, Commands, client, log, reason

BACKOFF_MIN = 0.1  # first reconnect delay; doubles up to BACKOFF_MAX, with jitter
BACKOFF_MAX = 2.0
READ_TIMEOUT = 0.25  # the listener wakes at least this often to check its probe
PROBE_EVERY = 1.0  # a ping through our own subscription, to prove it still delivers
PROBE_TIMEOUT = 3.0  # a subscription that has not echoed the ping by then is dead
SUBSCRIBE_TIMEOUT = 2.0  # wait for Redis to confirm a subscription before reading history
# A chat id more than this far ahead of Redis's clock (as this node reckons it: its own clock
# plus the offset TIME showed at connect) cannot have come from the publish script, whose
# XADD takes the time from Redis's clock; it must not move the replay mark. The margin
# covers the offset's error (half a round trip), drift between reconnects and a Redis clock
# stepped back (its ids keep the newest ms) by NTP; a forged id within it moves the mark at
# most this far ahead, and a replay finds such a mark ahead of the stream (see _replay).
MAX_AHEAD_MS = 5_000


class Subscriber:
    """Holds the subscription, hands each room message to the broker's listener once."""

    def __init__(
        self,
        broker: Broker,
        commands: Commands,
        set_state: Callable[[bool, str], None],
        register: Callable[[], Awaitable[None]],
        on_event: Callable[[bytes], None],
    ) -> None:
        self._broker = broker  # read only: its listener and history size
        self._commands = commands
        self._set_state = set_state  # the broker's readiness follows this connection
        self._register = register  # after a (re)connect: heartbeat and presence
        self._on_event = on_event  # a console event from the events channel
        self._room_prefix = commands.room_prefix
        self._control = commands.prefix.encode() + b"control:" + broker.node_id.encode()
        self._events = commands.events_channel
        self._probe = b"ping"
        self._sub_redis: Redis | None = None  # the one subscriber connection
        self._pubsub: PubSub | None = None  # set only while subscribed and confirmed
        self._rooms: set[str] = set()  # rooms this node wants, whatever Redis's state
        self._channel_rooms: dict[bytes, str] = {}
        # Newest chat id handed to the Hub per room: a resubscribed node replays the stream
        # after it (what was published while it was deaf). It follows live messages, so an
        # envelope PUBLISHed by anyone moves it (within MAX_AHEAD_MS of the clock): only the
        # replay relies on it, and checks it against the stream.
        self._last_ids: dict[str, tuple[int, int]] = {}
        # Newest id read from the room's stream (at subscribe, by a replay): a live chat not
        # newer was in the stream already, so the replay (or the joiner's history) gave it.
        # Only Redis's stream sets it, so no forged envelope can make real messages drop.
        self._read_ids: dict[str, tuple[int, int]] = {}
        self._clock_offset_ms = 0.0  # Redis's clock minus ours, measured at each connect
        self._held: list[tuple[str, bytes]] | None = None  # room messages while resubscribing
        self.replayed = 0  # chat messages recovered from streams after a resubscription
        self.duplicates = 0  # chat messages dropped because their id was not newer
        self.gaps = 0  # resubscriptions that found messages trimmed before they were replayed
        self.future_ids = 0  # chat ids too far ahead of Redis's clock to be real: not marked
        self._confirm: dict[bytes, list[asyncio.Future[None]]] = {}
        self._probe_sent: float | None = None
        self._first_attempt = asyncio.Event()

    @property
    def connected(self) -> bool:
        """Subscribed and confirmed: the node hears its rooms and the console's events."""
        return self._pubsub is not None

    def open(self) -> None:
        self._sub_redis = client(self._commands.url, self._broker.node_id, "sub")

    async def close(self) -> None:
        if self._sub_redis is not None:
            await self._sub_redis.aclose()
        self._sub_redis = None

    async def first_attempt(self, timeout: float) -> None:
        """Wait up to `timeout` for the first connection attempt to succeed or fail."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), timeout)

    # --- the listener ----------------------------------------------------------------------

    async def run(self) -> None:
        """Hold the subscription: connect, register, read; on loss back off and do it again."""
        delay = BACKOFF_MIN
        while True:
            try:
                # Live room messages wait until the streams are replayed, so every room keeps
                # one order: first what was missed, then what arrived meanwhile.
                self._held = []
                await self._connect()
                await self._measure_clock()
                await self._register()
                await self._replay()
                held, self._held = self._held, None
                for room, data in held:
                    self._room_message(room, data)
                self._set_state(True, "connected")
                self._first_attempt.set()
                delay = BACKOFF_MIN
                await self._read_loop()
            except asyncio.CancelledError:
                raise
            except FAILURES as exc:
                self._set_state(False, reason(exc))
            except Exception as exc:  # a bug must not end the listener for good
                log.exception("redis listener failed")
                self._set_state(False, f"listener error: {exc!r}"[:200])
            finally:
                self._held = None  # not delivered: the next replay covers them
                await self.drop()
            self._first_attempt.set()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _connect(self) -> None:
        """Subscribe a fresh connection to our channels and every wanted room, confirmed."""
        assert self._sub_redis is not None
        pubsub = self._sub_redis.pubsub()
        try:
            done: set[bytes] = set()
            while True:
                # rooms joined while we were subscribing are picked up by the next round;
                # there is no await between the last check and publishing the connection
                wanted = [self._control, self._events]
                wanted += [self._commands.room_channel(r) for r in sorted(self._rooms)]
                missing = [c for c in wanted if c not in done]
                if not missing:
                    break
                await pubsub.subscribe(*missing)
                await self._read_until_confirmed(pubsub, set(missing))
                done.update(missing)
        except BaseException:
            await pubsub.aclose()
            raise
        self._pubsub = pubsub
        self._probe_sent = None
        # rooms left while we were subscribing: their last member is gone
        n = len(self._room_prefix)
        stale = [
            c for c in done if c.startswith(self._room_prefix) and c[n:].decode() not in self._rooms
        ]
        if stale:
            await pubsub.unsubscribe(*stale)

    async def _measure_clock(self) -> None:
        """Redis's clock against ours (chat ids are Redis's milliseconds): see MAX_AHEAD_MS."""
        redis = self._commands.redis
        assert redis is not None
        before = time.time()
        seconds, micros = await redis.time()
        after = time.time()
        self._clock_offset_ms = (seconds + micros / 1e6 - (before + after) / 2) * 1000

    async def _read_until_confirmed(self, pubsub: PubSub, channels: set[bytes]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SUBSCRIBE_TIMEOUT
        while channels:
            if loop.time() > deadline:
                raise RedisTimeoutError("subscription not confirmed")
            msg = await pubsub.get_message(timeout=READ_TIMEOUT)
            if msg is None:
                continue
            if msg["type"] == "subscribe":
                channels.discard(msg["channel"])
            self._dispatch(msg)

    async def _read_loop(self) -> None:
        pubsub = self._pubsub
        redis = self._commands.redis
        assert pubsub is not None and redis is not None
        loop = asyncio.get_running_loop()
        next_probe = loop.time() + PROBE_EVERY
        while True:
            conn = pubsub.connection
            # redis-py would quietly reconnect a closed connection on the next read and lose
            # what was published meanwhile; a reconnect must go through run() instead
            if conn is None or not conn.is_connected:
                raise RedisConnectionError("subscriber connection closed")
            msg = await pubsub.get_message(timeout=READ_TIMEOUT)
            if msg is not None:
                self._dispatch(msg)
            now = loop.time()
            if self._probe_sent is not None:
                if now - self._probe_sent > PROBE_TIMEOUT:
                    raise RedisTimeoutError("subscription stopped delivering (probe lost)")
            elif now >= next_probe:
                next_probe = now + PROBE_EVERY
                self._probe_sent = now
                await redis.publish(self._control, self._probe)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        channel: bytes = msg["channel"]
        if kind == "message":
            data: bytes = msg["data"]
            room = self._channel_rooms.get(channel)
            if room is not None:
                if self._held is not None:
                    self._held.append((room, data))
                else:
                    self._room_message(room, data)
            elif channel == self._events:
                self._on_event(data)
            elif channel == self._control and data == self._probe:
                self._probe_sent = None
        elif kind == "subscribe":
            for fut in self._confirm.pop(channel, ()):
                if not fut.done():
                    fut.set_result(None)

    def _room_message(self, room: str, data: bytes) -> None:
        """Hand one room message to the Hub, dropping a chat the stream already gave."""
        if room not in self._rooms:
            return
        msg_id = history.parse_id(data[1 : data.find(b"\n")]) if data[:1] == b"c" else None
        if msg_id is not None:
            read = self._read_ids.get(room)
            if read is not None and msg_id <= read:
                self.duplicates += 1
                return
        try:
            accepted = self._broker.listener.deliver(room, data)
        except Exception:  # one bad delivery must not stop the listener
            log.exception("delivering a message on %s failed", loggable(room))
            return
        if accepted and msg_id is not None:
            self._mark(room, msg_id)

    def _mark(self, room: str, msg_id: tuple[int, int]) -> None:
        """Move the replay mark to a delivered chat's id, unless Redis cannot have made it."""
        if msg_id[0] > time.time() * 1000 + self._clock_offset_ms + MAX_AHEAD_MS:
            self.future_ids += 1
            if self.future_ids == 1:
                log.warning(
                    "room %s: chat id %d-%d is ahead of redis's clock, not from its stream "
                    "(a forged envelope?): delivered but not marked; counted from now on",
                    loggable(room),
                    *msg_id,
                )
            return
        last = self._last_ids.get(room)
        if last is None or msg_id > last:
            self._last_ids[room] = msg_id

    async def _replay(self) -> None:
        """Deliver what each room's stream got after the last id we delivered (we were deaf).

        The stream still holding that id, or never having been trimmed, proves nothing in
        between is missing; otherwise the room's members are told (the Hub closes them with
        1013, they rejoin with `since` and get `recovered: false`), never left with a hole.
        """
        size = self._broker.history_size
        if not size:
            return
        redis = self._commands.redis
        assert redis is not None
        for room in sorted(self._rooms):
            last = self._last_ids.get(room)
            if last is None:
                continue
            key = self._commands.key("history:", room)
            entries: Any = await redis.xrange(key, min=b"%d-%d" % last)
            if entries and history.parse_id(entries[0][0]) == last:
                entries = entries[1:]
            elif len(entries) >= size:
                # The mark is gone and the stream is full: trimming may have taken messages
                # after it. (A shorter stream was never trimmed, e.g. a Redis restarted
                # without persistence: everything after the mark is still in it.)
                if entries:
                    self._set_marks(room, history.parse_id(entries[-1][0]) or last)
                log.warning("room %s: missed more messages than its history holds", loggable(room))
                self.gaps += 1
                self._broker.listener.missed(room)
                continue
            elif not entries:
                # Nothing at or after the mark: up to date, unless the stream's newest entry
                # is older than the mark, which then never was one of its ids (a forged
                # envelope's within MAX_AHEAD_MS, a Redis whose clock went back): what was
                # delivered, and so what was missed, is unknown. The members rejoin with
                # `since`; the mark restarts from the stream.
                newest = await history.newest_id(redis, key)
                if newest != (0, 0) and newest < last:
                    self._set_marks(room, newest)
                    log.warning("room %s: replay mark ahead of the stream", loggable(room))
                    self.gaps += 1
                    self._broker.listener.missed(room)
                    continue
            for msg_id, wire in history.wires(entries):
                self._room_message(room, chat_envelope(msg_id, wire))
            if entries:
                self._read_ids[room] = history.parse_id(entries[-1][0]) or last
                self.replayed += len(entries)
                log.info("room %s: %d missed messages replayed", loggable(room), len(entries))

    def _set_marks(self, room: str, msg_id: tuple[int, int]) -> None:
        self._last_ids[room] = self._read_ids[room] = msg_id

    async def drop(self) -> None:
        """Close the subscription (the listener opens a fresh one when it reconnects)."""
        pubsub, self._pubsub = self._pubsub, None
        for futs in self._confirm.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)  # subscribe() returns; the next connect covers it
        self._confirm.clear()
        if pubsub is not None:
            await pubsub.aclose()

    # --- rooms the Hub asks for ------------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        channel = self._commands.room_channel(room)
        if room not in self._last_ids and self._pubsub is not None and self._broker.history_size:
            # Before subscribing: whatever comes after this id reaches us live or, after a
            # resubscription, from the stream. (After it, a live message could be dropped.)
            redis = self._commands.redis
            assert redis is not None
            try:
                self._set_marks(
                    room, await history.newest_id(redis, self._commands.key("history:", room))
                )
            except FAILURES as exc:
                log.warning("subscribe %s: newest id unknown: %s", loggable(room), exc)
        self._rooms.add(room)
        self._channel_rooms[channel] = room
        pubsub = self._pubsub
        if pubsub is None:
            return  # the listener subscribes every wanted room when it (re)connects
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm.setdefault(channel, []).append(fut)
        try:
            await pubsub.subscribe(channel)
            # confirmed subscription first, then the Hub reads history: nothing falls between
            await asyncio.wait_for(fut, SUBSCRIBE_TIMEOUT)
        except FAILURES as exc:
            log.warning("subscribe %s: %s (resubscribed on reconnect)", room, exc)
        finally:
            waiting = self._confirm.get(channel)
            if waiting is not None and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._confirm[channel]

    async def unsubscribe(self, room: str) -> None:
        channel = self._commands.room_channel(room)
        self._rooms.discard(room)
        self._channel_rooms.pop(channel, None)
        self._last_ids.pop(room, None)
        self._read_ids.pop(room, None)
        pubsub = self._pubsub
        if pubsub is None:
            return
        try:
            await pubsub.unsubscribe(channel)
        except FAILURES as exc:
            log.debug("unsubscribe %s: %s", room, exc)
