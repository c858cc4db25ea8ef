"""The subscriber: this node's pub/sub connections and its listener loop.

Subscribed to a room's channel only while the node has members there, plus the node's own
control channel (a liveness probe) and the console's events channel. After a reconnect it
replays from each room's stream what was published while it was deaf, drops what it has
delivered already, and tells the Hub of a room whose missed messages were trimmed (a gap).

On a single Redis that is one connection (SUBSCRIBE). On a Redis Cluster the rooms use
sharded pub/sub (SSUBSCRIBE, Redis 7): one plain connection per master, each subscribed to
the rooms whose slot that master serves (routed by CLUSTER SLOTS), each with a control
channel of its own in one of its slots, so each connection is probed. redis-py's own
ClusterPubSub is not used: it reconnects and moves subscriptions by itself when a
connection drops or a slot moves, without telling, and what was published meanwhile would
be lost silently; here any connection lost (a master failed over, a slot moved: MOVED on
SSUBSCRIBE) takes the whole subscription down, and the listener reconnects from a fresh
CLUSTER SLOTS and replays every room's stream, as after any other drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...events import loggable
from ..base import Broker, chat_envelope
from . import history
from .connection import FAILURES, Commands, cancel_all, client, log, reason

SUBSCRIBED = ("subscribe", "ssubscribe")
MESSAGES = ("message", "smessage")

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


class Link:
    """One pub/sub connection: the single Redis's, or one cluster master's (its slots)."""

    def __init__(
        self,
        pubsub: PubSub,
        control: bytes,
        tag: bytes,
        ranges: list[tuple[int, int]] | None,
        own: Redis | None,
    ) -> None:
        self.pubsub = pubsub
        self.control = control  # the probe channel it is subscribed to
        self.tag = tag  # what makes the node's control channel one of its slots ('' alone)
        self.ranges = ranges  # the slots it serves; None: every one (a single Redis)
        self.own = own  # its own client (a cluster master's), closed with it
        self.probe_sent: float | None = None

    @property
    def sharded(self) -> bool:
        return self.ranges is not None

    def serves(self, slot: int) -> bool:
        return self.ranges is None or any(lo <= slot <= hi for lo, hi in self.ranges)

    async def subscribe(self, *channels: bytes) -> None:
        if self.ranges is None:
            await self.pubsub.subscribe(*channels)
        else:  # one SSUBSCRIBE per channel: those of one call must share a slot
            for channel in channels:
                await self.pubsub.ssubscribe(channel)

    async def unsubscribe(self, channel: bytes) -> None:
        if self.ranges is None:
            await self.pubsub.unsubscribe(channel)
        else:
            await self.pubsub.sunsubscribe(channel)

    async def close(self) -> None:
        try:
            await self.pubsub.aclose()
        finally:
            if self.own is not None:
                await self.own.aclose()


def _with_address(url: str, host: str, port: int) -> str:
    """`url` (credentials, TLS, options) pointed at host:port: a cluster master's URL."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{auth}@{where}" if auth else where))


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
        self._sub_redis: Redis | None = None  # the single Redis's subscriber client
        self._links: list[Link] = []  # set only while subscribed and confirmed
        self._channel_links: dict[bytes, Link] = {}  # where each channel is subscribed
        self._control_links: dict[bytes, Link] = {}
        self._broken: str | None = None  # the subscription must be made again: why
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
        self._first_attempt = asyncio.Event()

    @property
    def connected(self) -> bool:
        """Subscribed and confirmed: the node hears its rooms and the console's events."""
        return bool(self._links)

    def open(self) -> None:
        """Nothing to open before the first connection tells a single Redis from a cluster."""

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
        """Subscribe fresh connections to our channels and every wanted room, confirmed."""
        redis = await self._commands.connect()
        links: list[Link] = []
        try:
            if isinstance(redis, RedisCluster):
                for host, port, ranges in await self._masters(redis):
                    links.append(await self._open_link(redis, host, port, ranges))
            else:
                if self._sub_redis is None:
                    self._sub_redis = client(self._commands.url, self._broker.node_id, "sub")
                pubsub = self._sub_redis.pubsub()
                links.append(Link(pubsub, self._control, b"", None, None))
            done: set[bytes] = set()
            while True:
                # rooms joined while we were subscribing are picked up by the next round;
                # there is no await between the last check and publishing the connections
                wanted = [link.control for link in links] + [self._events]
                wanted += [self._commands.room_channel(r) for r in sorted(self._rooms)]
                missing = [c for c in wanted if c not in done]
                if not missing:
                    break
                by_link: dict[Link, list[bytes]] = {}
                for channel in missing:
                    by_link.setdefault(self._route(links, channel), []).append(channel)
                for link, channels in by_link.items():
                    await link.subscribe(*channels)
                for link, channels in by_link.items():
                    await self._read_until_confirmed(link.pubsub, set(channels))
                    for channel in channels:
                        self._channel_links[channel] = link
                done.update(missing)
        except BaseException:
            for link in links:
                with contextlib.suppress(*FAILURES):
                    await link.close()
            raise
        self._links = links
        self._control_links = {link.control: link for link in links}
        self._broken = None
        # rooms left while we were subscribing: their last member is gone
        stale = [
            c for c in done if c.startswith(self._room_prefix) and c not in self._channel_rooms
        ]
        for channel in stale:
            owner = self._channel_links.pop(channel, None)
            if owner is not None:
                await owner.unsubscribe(channel)

    def _route(self, links: list[Link], channel: bytes) -> Link:
        """The connection that serves `channel`'s slot (the only one on a single Redis)."""
        if len(links) == 1 and not links[0].sharded:
            return links[0]
        redis = self._commands.redis
        assert isinstance(redis, RedisCluster)
        slot = redis.keyslot(channel)
        for link in links:
            if link.serves(slot):
                return link
        raise RedisConnectionError(f"no master serves slot {slot}: the cluster is changing")

    async def _masters(self, redis: RedisCluster) -> list[tuple[str, int, list[tuple[int, int]]]]:
        """Every master and the slots it serves, as the first node that answers says."""
        if not redis.get_nodes():
            await redis.initialize()
        error: BaseException = RedisConnectionError("no cluster node answered")
        for node in redis.get_nodes():
            try:
                slots: dict[tuple[int, int], Any] = await redis.execute_command(
                    "CLUSTER SLOTS", target_nodes=node
                )
            except FAILURES as exc:
                error = exc
                continue
            masters: dict[tuple[str, int], list[tuple[int, int]]] = {}
            for span, owners in slots.items():
                host, port = owners["primary"][:2]
                host = host.decode() if isinstance(host, bytes) else str(host)
                masters.setdefault((host or node.host, int(port)), []).append(span)
            covered = sum(hi - lo + 1 for spans in masters.values() for lo, hi in spans)
            if covered < 16384:
                error = RedisConnectionError(f"cluster serves {covered} of 16384 slots")
                continue
            return [(host, port, spans) for (host, port), spans in sorted(masters.items())]
        raise error

    async def _open_link(
        self, redis: RedisCluster, host: str, port: int, ranges: list[tuple[int, int]]
    ) -> Link:
        """A connection of our own to one master, with a control channel in its slots."""
        own = client(_with_address(self._commands.url, host, port), self._broker.node_id, "sub")
        i = 0
        while not any(lo <= redis.keyslot(self._control + b":{%d}" % i) <= hi for lo, hi in ranges):
            i += 1
        tag = b":{%d}" % i
        return Link(own.pubsub(), self._control + tag, tag, ranges, own)

    async def _measure_clock(self) -> None:
        """Redis's clock against ours (chat ids are Redis's milliseconds): see MAX_AHEAD_MS."""
        redis = self._commands.redis
        assert redis is not None
        before = time.time()
        seconds, micros = await redis.time()  # on a cluster: any master's
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
            if msg["type"] in SUBSCRIBED:
                channels.discard(msg["channel"])
            self._dispatch(msg)

    async def _read_loop(self) -> None:
        """Read every connection (one task each) and probe each; the first to fail ends it."""
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._read_link(link)) for link in self._links]
        tasks.append(loop.create_task(self._probe_links(self._links)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise RedisConnectionError("subscriber stopped")
        finally:
            await cancel_all(tasks, report=False)  # their errors were the listener's

    async def _read_link(self, link: Link) -> None:
        pubsub = link.pubsub
        while True:
            conn = pubsub.connection
            # redis-py would quietly reconnect a closed connection on the next read and lose
            # what was published meanwhile; a reconnect must go through run() instead
            if conn is None or not conn.is_connected:
                raise RedisConnectionError("subscriber connection closed")
            msg = await pubsub.get_message(timeout=READ_TIMEOUT)
            if msg is not None:
                self._dispatch(msg)

    async def _probe_links(self, links: list[Link]) -> None:
        """A ping through each connection every PROBE_EVERY; one not echoed within
        PROBE_TIMEOUT means that subscription stopped delivering."""
        redis = self._commands.redis
        assert redis is not None
        loop = asyncio.get_running_loop()
        next_probe = loop.time() + PROBE_EVERY
        while True:
            await asyncio.sleep(min(READ_TIMEOUT, PROBE_EVERY))
            if self._broken is not None:
                raise RedisConnectionError(self._broken)
            now = loop.time()
            for link in links:
                if link.probe_sent is not None and now - link.probe_sent > PROBE_TIMEOUT:
                    raise RedisTimeoutError("subscription stopped delivering (probe lost)")
            if now < next_probe:
                continue
            next_probe = now + PROBE_EVERY
            for link in links:
                if link.probe_sent is None:
                    link.probe_sent = now
                    await redis.execute_command(
                        self._commands.publish_command, self._control + link.tag, self._probe
                    )

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        channel: bytes = msg["channel"]
        if kind in MESSAGES:
            data: bytes = msg["data"]
            room = self._channel_rooms.get(channel)
            if room is not None:
                if self._held is not None:
                    self._held.append((room, data))
                else:
                    self._room_message(room, data)
            elif channel == self._events:
                self._on_event(data)
            elif data == self._probe and (link := self._control_links.get(channel)):
                link.probe_sent = None
        elif kind in SUBSCRIBED:
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
            key = self._commands.room_key("history", room)
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
        links, self._links = self._links, []
        self._channel_links.clear()
        self._control_links.clear()
        for futs in self._confirm.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)  # subscribe() returns; the next connect covers it
        self._confirm.clear()
        for link in links:
            with contextlib.suppress(*FAILURES):
                await link.close()

    # --- rooms the Hub asks for ------------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        channel = self._commands.room_channel(room)
        if room not in self._last_ids and self._links and self._broker.history_size:
            # Before subscribing: whatever comes after this id reaches us live or, after a
            # resubscription, from the stream. (After it, a live message could be dropped.)
            redis = self._commands.redis
            assert redis is not None
            try:
                self._set_marks(
                    room, await history.newest_id(redis, self._commands.room_key("history", room))
                )
            except FAILURES as exc:
                log.warning("subscribe %s: newest id unknown: %s", loggable(room), exc)
        self._rooms.add(room)
        self._channel_rooms[channel] = room
        if not self._links:
            return  # the listener subscribes every wanted room when it (re)connects
        try:
            link = self._route(self._links, channel)
        except RedisConnectionError as exc:
            self._broken = str(exc)  # the listener reconnects and subscribes it then
            return
        self._channel_links[channel] = link
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm.setdefault(channel, []).append(fut)
        try:
            await link.subscribe(channel)
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
        link = self._channel_links.pop(channel, None)
        if link is None or link not in self._links:
            return
        try:
            await link.unsubscribe(channel)
        except FAILURES as exc:
            log.debug("unsubscribe %s: %s", room, exc)
