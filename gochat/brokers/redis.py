"""The Redis broker: many nodes behind a load balancer act as one chat server.

Routing, not broadcasting: one subscriber connection per node, subscribed to a room's
channel only while the node has members there. Chat messages get their id and their place
in the room's order from one Lua call (XADD + PUBLISH). Presence is counted per connection
in Redis and its transitions are published by the script that changes the count, so each
`online`/`offline` goes out once for the whole cluster. Each node keeps a heartbeat key;
every node reaps the members of nodes whose heartbeat expired.

While Redis cannot be reached, requests are refused with BrokerUnavailable (the client
gets `error` `unavailable` and may retry) rather than queued: a queue would tell the client
its message is on its way while this node might die holding it. See docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import Settings
from ..events import loggable
from ..protocol import Member
from . import redis_lua
from .base import CHAT_PREFIX, Broker, BrokerUnavailable, History, chat_envelope

log = logging.getLogger(__name__)

# Command connections per node (opened as needed); more requests wait for one (blocking
# pool), up to COMMAND_TIMEOUT. A join is three round trips; with 32, a storm of 500 joins
# on a busy node (S4's set-up) queued past the timeout and 1 run in 3 had joins refused.
POOL_SIZE = 128
COMMAND_TIMEOUT = 2.0  # a hanging Redis fails a request after this long, never blocks it
BACKOFF_MIN = 0.1  # first reconnect delay; doubles up to BACKOFF_MAX, with jitter
BACKOFF_MAX = 2.0
READ_TIMEOUT = 0.25  # the listener wakes at least this often to check its probe
PROBE_EVERY = 1.0  # a ping through our own subscription, to prove it still delivers
PROBE_TIMEOUT = 3.0  # a subscription that has not echoed the ping by then is dead
SUBSCRIBE_TIMEOUT = 2.0  # wait for Redis to confirm a subscription before reading history
EVENT_QUEUE = 1024  # console events waiting to be published; the oldest are dropped
FUTURE_MS = 3_600_000  # a chat id this far ahead of our clock is not trusted for dedupe
STREAM_ID = re.compile(rb"\d{1,20}-\d{1,20}")

# Errors that mean "Redis is not reachable now", as opposed to a bug in a script.
UNREACHABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    TimeoutError,
)
FAILURES: tuple[type[BaseException], ...] = (RedisError, *UNREACHABLE)


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait for them, cancelling again any that is still running.

    One cancel is not always enough: a cancel that lands while redis-py finishes a pipeline
    can be lost (the task stays "cancelling" and goes back to waiting for work), and a
    single cancel-then-gather then waits forever, so the node never stops.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=0.1)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("redis task %s failed", task.get_name(), exc_info=task.exception())


def _parse_id(raw: bytes) -> tuple[int, int] | None:
    """A stream id (b"1732740000123-0") as a comparable pair; None when it is not one."""
    ms, _, seq = raw.partition(b"-")
    try:
        return int(ms), int(seq)
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"redis unreachable: {text[:160]}"


class RedisBroker(Broker):
    """Fan-out, history and presence through one Redis shared by every node."""

    kind = "redis"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.node_id, settings.history, settings.key_prefix)
        if not settings.redis_url:
            raise ValueError("RedisBroker needs REDIS_URL")
        self.url = settings.redis_url
        self.prefix = settings.key_prefix
        self.ttl = settings.presence_ttl
        # A heartbeat outlives 3 missed refreshes; a survivor's reaper sees it gone within one
        # more period, so a crashed node's members go offline 1/2..5/6 of the TTL after.
        self.heartbeat_ms = max(int(self.ttl * 2000 / 3), 100)
        self.maintain_every = max(self.ttl / 6, 0.05)
        pre = self.prefix.encode()
        self._room_prefix = pre + b"room:"
        self._control = pre + b"control:" + self.node_id.encode()
        self._events = pre + b"events"
        self._probe = b"ping"
        self._redis: Redis | None = None  # commands: a pool
        self._sub_redis: Redis | None = None  # the one subscriber connection
        self._pubsub: PubSub | None = None  # set only while subscribed and confirmed
        self._rooms: set[str] = set()  # rooms this node wants, whatever Redis's state
        self._channel_rooms: dict[bytes, str] = {}
        # Newest chat id handed to the Hub per room: a resubscribed node replays the stream
        # after it (what was published while it was deaf) and drops anything not newer.
        self._last_ids: dict[str, tuple[int, int]] = {}
        self._held: list[tuple[str, bytes]] | None = None  # room messages while resubscribing
        self.replayed = 0  # chat messages recovered from streams after a resubscription
        self.duplicates = 0  # chat messages dropped because their id was not newer
        self.gaps = 0  # resubscriptions that found messages trimmed before they were replayed
        self._confirm: dict[bytes, list[asyncio.Future[None]]] = {}
        # What this node has told Redis about its presence: (room, conn) -> (userId, name).
        # Kept here rather than asked of the Hub, because a joining connection is counted
        # before the Hub lists it as a member.
        self._local: dict[tuple[str, str], tuple[str, str]] = {}
        self._presence_gen = 0
        self._presence_dirty = False
        self._probe_sent: float | None = None
        self._events_out: deque[bytes] = deque(maxlen=EVENT_QUEUE)
        self._events_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._first_attempt = asyncio.Event()
        self._stopped = False
        self._scripts: dict[str, Any] = {}
        # Group commit of chat messages: while one publish round trip is on its way, the
        # next messages wait here and then go together in one pipeline (see submit).
        self._publishing = False
        self._send_scheduled = False
        self._outgoing: list[tuple[str, bytes, asyncio.Future[bytes]]] = []
        self._batches: set[asyncio.Task[None]] = set()
        self.publish_round_trips = 0

    # --- names -----------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return self.prefix + "".join(parts)

    def _room_channel(self, room: str) -> bytes:
        return self._room_prefix + room.encode()

    # --- lifecycle -------------------------------------------------------------------------

    def _client(self, role: str) -> Redis:
        # No retries inside redis-py: a failed command is reported (never silently re-run,
        # which could append a chat twice), and reconnection is the listener's job.
        # Named `gochat:<node>:<role>`, so CLIENT LIST tells whose connection is whose.
        # A blocking pool: a burst of requests (a join storm) queues for a connection, up to
        # the command timeout, instead of failing with "Too many connections" (redis-py's
        # plain pool refuses past 100), which also cost the node its readiness.
        name = re.sub(r"[^!-~]", "_", f"gochat:{self.node_id}:{role}")
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=POOL_SIZE,
            timeout=COMMAND_TIMEOUT,
            client_name=name,
            decode_responses=False,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            socket_keepalive=True,
            health_check_interval=0,
        )
        return Redis.from_pool(pool)

    async def start(self) -> None:
        self._redis = self._client("cmd")
        self._sub_redis = self._client("sub")
        for name, source in (
            ("publish", redis_lua.PUBLISH),
            ("add", redis_lua.PRESENCE_ADD),
            ("remove", redis_lua.PRESENCE_REMOVE),
            ("sync", redis_lua.PRESENCE_SYNC),
            ("heartbeat", redis_lua.HEARTBEAT),
            ("reap", redis_lua.REAP),
            ("leave", redis_lua.LEAVE),
        ):
            self._scripts[name] = self._redis.register_script(source)
        self._set_state(False, "connecting to redis")
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen(), name="redis-listener"),
            loop.create_task(self._maintain(), name="redis-heartbeat"),
            loop.create_task(self._pump_events(), name="redis-events"),
        ]
        # Give a reachable Redis a moment so the node starts ready; an absent one does not
        # hold up the start (the listener keeps trying in the background).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), COMMAND_TIMEOUT + 1)

    async def stop(self) -> None:
        self._stopped = True
        await _cancel_all(self._tasks)
        self._tasks = []
        if self._batches:  # chat messages on their way: let them land, within the timeout
            await asyncio.wait(set(self._batches), timeout=COMMAND_TIMEOUT + 1)
            await _cancel_all(list(self._batches))
        await self._drop_subscriber()
        if self._redis is not None:
            try:
                await self._scripts["leave"](args=[self.prefix, self.node_id])
            except FAILURES as exc:
                log.warning("could not remove this node's presence: %s", exc)
            await self._redis.aclose()
        if self._sub_redis is not None:
            await self._sub_redis.aclose()
        self._redis = self._sub_redis = None
        self._local.clear()
        self._set_state(False, "stopped")

    # --- the listener ----------------------------------------------------------------------

    async def _listen(self) -> None:
        """Hold the subscription: connect, register, read; on loss back off and do it again."""
        delay = BACKOFF_MIN
        while True:
            try:
                # Live room messages wait until the streams are replayed, so every room keeps
                # one order: first what was missed, then what arrived meanwhile.
                self._held = []
                await self._connect_subscriber()
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
                self._set_state(False, _reason(exc))
            except Exception as exc:  # a bug must not end the listener for good
                log.exception("redis listener failed")
                self._set_state(False, f"listener error: {exc!r}"[:200])
            finally:
                self._held = None  # not delivered: the next replay covers them
                await self._drop_subscriber()
            self._first_attempt.set()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _connect_subscriber(self) -> None:
        """Subscribe a fresh connection to our channels and every wanted room, confirmed."""
        assert self._sub_redis is not None
        pubsub = self._sub_redis.pubsub()
        try:
            done: set[bytes] = set()
            while True:
                # rooms joined while we were subscribing are picked up by the next round;
                # there is no await between the last check and publishing the connection
                wanted = [self._control, self._events]
                wanted += [self._room_channel(r) for r in sorted(self._rooms)]
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

    async def _register(self) -> None:
        """After a (re)connect: heartbeat, then make Redis's presence for us match ours."""
        await self._heartbeat(ready=True)  # what the node is once this returns
        await self._sync_presence()

    async def _read_loop(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None and self._redis is not None
        loop = asyncio.get_running_loop()
        next_probe = loop.time() + PROBE_EVERY
        while True:
            conn = pubsub.connection
            # redis-py would quietly reconnect a closed connection on the next read and lose
            # what was published meanwhile; a reconnect must go through _listen instead
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
                await self._redis.publish(self._control, self._probe)

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
                try:
                    self.cluster.cluster_event(data)
                except Exception:
                    log.exception("event handler failed")
            elif channel == self._control and data == self._probe:
                self._probe_sent = None
        elif kind == "subscribe":
            for fut in self._confirm.pop(channel, ()):
                if not fut.done():
                    fut.set_result(None)

    def _room_message(self, room: str, data: bytes) -> None:
        """Hand one room message to the Hub, dropping a chat whose id is not newer."""
        if room not in self._rooms:
            return
        msg_id = _parse_id(data[1 : data.find(b"\n")]) if data[:1] == b"c" else None
        if msg_id is not None:
            last = self._last_ids.get(room)
            if last is not None and msg_id <= last:
                self.duplicates += 1
                return
        try:
            accepted = self.listener.deliver(room, data)
        except Exception:  # one bad delivery must not stop the listener
            log.exception("delivering a message on %s failed", loggable(room))
            return
        # Only a message the Hub took, with an id not from the far future, moves the mark:
        # a forged envelope must not make the node drop every real message after it.
        if accepted and msg_id is not None and msg_id[0] < time.time() * 1000 + FUTURE_MS:
            self._last_ids[room] = msg_id

    async def _replay(self) -> None:
        """Deliver what each room's stream got after the last id we delivered (we were deaf).

        The stream still holding that id, or never having been trimmed, proves nothing in
        between is missing; otherwise the room's members are told (the Hub closes them with
        1013, they rejoin with `since` and get `recovered: false`), never left with a hole.
        """
        if not self.history_size:
            return
        assert self._redis is not None
        for room in sorted(self._rooms):
            last = self._last_ids.get(room)
            if last is None:
                continue
            entries: Any = await self._redis.xrange(
                self._key("history:", room), min=b"%d-%d" % last
            )
            if entries and _parse_id(entries[0][0]) == last:
                entries = entries[1:]
            elif len(entries) >= self.history_size:
                # The mark is gone and the stream is full: trimming may have taken messages
                # after it. (A shorter stream was never trimmed, e.g. a Redis restarted
                # without persistence: everything after the mark is still in it.)
                if entries:
                    self._last_ids[room] = _parse_id(entries[-1][0]) or last
                log.warning("room %s: missed more messages than its history holds", loggable(room))
                self.gaps += 1
                self.listener.missed(room)
                continue
            for msg_id, wire in self._wires(entries):
                self._room_message(room, chat_envelope(msg_id, wire))
            if entries:
                self.replayed += len(entries)
                log.info("room %s: %d missed messages replayed", loggable(room), len(entries))

    async def _newest_id(self, room: str) -> tuple[int, int]:
        """The id of the newest message in `room`'s stream, (0, 0) when there is none."""
        assert self._redis is not None
        newest: Any = await self._redis.xrevrange(self._key("history:", room), count=1)
        return (_parse_id(newest[0][0]) or (0, 0)) if newest else (0, 0)

    async def _drop_subscriber(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        for futs in self._confirm.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)  # subscribe() returns; the next connect covers it
        self._confirm.clear()
        if pubsub is not None:
            await pubsub.aclose()

    # --- heartbeat, reaper, presence re-registration ---------------------------------------

    async def _maintain(self) -> None:
        """Every TTL/6: refresh our heartbeat, reap dead nodes, repair our presence."""
        while True:
            await asyncio.sleep(self.maintain_every)
            if self._pubsub is None:
                continue  # the listener registers everything when it reconnects
            try:
                if await self._heartbeat():
                    log.warning("this node had been reaped; registering its presence again")
                    self._presence_dirty = True
                dead, published = await self._scripts["reap"](args=[self.prefix, self.node_id])
                self._report(published)
                for node in dead:
                    log.warning("node %s stopped without leaving: its members are offline", node)
                if self._presence_dirty:
                    await self._sync_presence()
            except FAILURES as exc:
                log.debug("maintenance skipped: %s", exc)

    def _info_json(self, ready: bool | None = None) -> bytes:
        info = self.cluster.node_info()
        ready = self.ready if ready is None else ready
        body = {"id": self.node_id, **info, "broker": self.kind, "ready": ready}
        return json.dumps(body, default=str, separators=(",", ":")).encode()

    async def _heartbeat(self, ready: bool | None = None) -> bool:
        """Refresh our heartbeat key; True when Redis did not know this node."""
        added = await self._scripts["heartbeat"](
            args=[self.prefix, self.node_id, self._info_json(ready), self.heartbeat_ms]
        )
        return bool(added)

    async def _sync_presence(self) -> None:
        """Make Redis's record of our members equal to ours (repeated if it moved meanwhile)."""
        for _ in range(5):
            gen = self._presence_gen
            args: list[Any] = [self.prefix, self.node_id]
            for (room, conn), (user, name) in self._local.items():
                args += (room, conn, user, name)
            removed, added, published = await self._scripts["sync"](args=args)
            self._report(published)
            if removed or added:
                log.info("presence re-registered: %d removed, %d added", removed, added)
            if gen == self._presence_gen:
                self._presence_dirty = False
                return
        self._presence_dirty = True  # still changing: the next maintenance round retries

    # --- requests from the Hub -------------------------------------------------------------

    @contextlib.contextmanager
    def _unavailable_on_error(self, what: str) -> Iterator[None]:
        """Turn Redis failures into BrokerUnavailable (the client is told, never ignored)."""
        try:
            yield
        except UNREACHABLE as exc:
            raise BrokerUnavailable(_reason(exc)) from exc
        except RedisError as exc:
            log.error("redis %s failed: %r", what, exc)
            raise BrokerUnavailable(f"redis error in {what}") from exc

    def _client_or_raise(self) -> Redis:
        """The command client when this node can serve requests, else BrokerUnavailable."""
        if self._stopped or self._redis is None:
            raise BrokerUnavailable("stopped")
        if not self.ready:
            raise BrokerUnavailable(self.reason)
        return self._redis

    async def subscribe(self, room: str) -> None:
        channel = self._room_channel(room)
        if room not in self._last_ids and self._pubsub is not None and self.history_size:
            # Before subscribing: whatever comes after this id reaches us live or, after a
            # resubscription, from the stream. (After it, a live message could be dropped.)
            try:
                self._last_ids[room] = await self._newest_id(room)
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
        channel = self._room_channel(room)
        self._rooms.discard(room)
        self._channel_rooms.pop(channel, None)
        self._last_ids.pop(room, None)
        pubsub = self._pubsub
        if pubsub is None:
            return
        try:
            await pubsub.unsubscribe(channel)
        except FAILURES as exc:
            log.debug("unsubscribe %s: %s", room, exc)

    def submit(self, room: str, suffix: bytes) -> asyncio.Future[bytes]:
        """Queue a chat message for the publish script (XADD + PUBLISH); see Broker.submit.

        Group commit: what is submitted in one tick goes in one round trip, and while a
        round trip is on its way, what is submitted meanwhile waits and then goes together
        in the next: a pipeline of the script, one write and one read for all of them. So a
        client that sends faster than a round trip (its reader does not wait for each), or
        many publishers on one node, cost Redis and the node a round trip per batch rather
        than per message, and the nodes receive those messages in bursts they coalesce.
        Order is kept: batches go one at a time, in order, and Redis runs a pipeline's
        scripts in order; a room's order is the order in which Redis runs them.
        """
        self._client_or_raise()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._outgoing.append((room, suffix, fut))
        if not self._publishing and not self._send_scheduled:
            self._send_scheduled = True
            loop.call_soon(self._send_outgoing)
        return fut

    def _send_outgoing(self) -> None:
        """Send what queued up as one batch, unless a round trip is still on its way."""
        self._send_scheduled = False
        if self._publishing or not self._outgoing:
            return
        batch, self._outgoing = self._outgoing, []
        self._publishing = True
        self.publish_round_trips += 1
        task = asyncio.get_running_loop().create_task(self._publish_batch(batch))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _publish_batch(self, batch: list[tuple[str, bytes, asyncio.Future[bytes]]]) -> None:
        """Publish a batch in one round trip; hand each message its id or its error."""
        try:
            if self._stopped:
                raise BrokerUnavailable("stopped")
            if len(batch) == 1:
                room, suffix, _ = batch[0]
                results: list[Any] = [
                    await self._scripts["publish"](
                        keys=[self._key("history:", room)], args=self._publish_args(room, suffix)
                    )
                ]
            else:
                results = await self._pipeline_publish(batch)
        except BaseException as exc:
            failure = self._unavailable(exc)
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._publishing = False
            self._send_outgoing()
        for (_, _, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(self._unavailable(result))
            else:
                fut.set_result(result)

    def _unavailable(self, exc: BaseException) -> BrokerUnavailable:
        """A publish failure as the Hub sees it (what _unavailable_on_error does for the
        requests that are awaited)."""
        if isinstance(exc, BrokerUnavailable):
            return exc
        if isinstance(exc, UNREACHABLE):
            err = BrokerUnavailable(_reason(exc))
        elif isinstance(exc, RedisError):
            log.error("redis publish failed: %r", exc)
            err = BrokerUnavailable("redis error in publish")
        else:
            err = BrokerUnavailable("stopped")
        err.__cause__ = exc
        return err

    async def _pipeline_publish(
        self, batch: list[tuple[str, bytes, asyncio.Future[bytes]]]
    ) -> list[Any]:
        assert self._redis is not None
        script = self._scripts["publish"]
        results: list[Any] = [None] * len(batch)
        todo = list(range(len(batch)))
        for attempt in (1, 2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    room, suffix, _ = batch[i]
                    key = self._key("history:", room)
                    pipe.evalsha(script.sha, 1, key, *self._publish_args(room, suffix))
                answers = await pipe.execute(raise_on_error=False)
            for i, answer in zip(todo, answers, strict=True):
                results[i] = answer
            # Redis lost its script cache (a restart, SCRIPT FLUSH): load it, send those again
            todo = [i for i in todo if isinstance(results[i], NoScriptError)]
            if not todo or attempt == 2:
                break
            await self._redis.script_load(script.script)
        return results

    def _publish_args(self, room: str, suffix: bytes) -> list[Any]:
        size = self.history_size
        return ["~" if size else "=", size, suffix, self._room_channel(room), CHAT_PREFIX]

    async def history(self, room: str, since: str | None) -> tuple[History, bool | None]:
        r = self._client_or_raise()
        size = self.history_size
        key = self._key("history:", room)
        recovered: bool | None = None
        with self._unavailable_on_error("history"):
            if since is not None:
                recovered = False
                wanted = since.encode()
                if size and STREAM_ID.fullmatch(wanted):
                    # `since` itself plus up to `size` after it, and one more to tell whether
                    # more than `size` are missing (then the ring semantics say: not recovered)
                    entries: Any = await r.xrange(key, min=wanted, count=size + 2)
                    if entries and entries[0][0] == wanted and len(entries) <= size + 1:
                        return self._wires(entries[1:]), True
            if not size:
                return [], recovered
            latest: Any = await r.xrevrange(key, count=size)
        return self._wires(reversed(latest)), recovered

    @staticmethod
    def _wires(entries: Any) -> History:
        return [(i, CHAT_PREFIX + i + f[b"s"]) for i, f in entries]

    async def presence_add(self, room: str, conn_id: str, user_id: str, name: str) -> None:
        self._client_or_raise()
        self._local[(room, conn_id)] = (user_id, name)
        self._presence_gen += 1
        try:
            with self._unavailable_on_error("presence"):
                published = await self._scripts["add"](
                    args=[self.prefix, self.node_id, room, conn_id, user_id, name]
                )
        except BrokerUnavailable:
            self._local.pop((room, conn_id), None)
            self._presence_dirty = True  # it may have been applied before the reply was lost
            raise
        self._report(published)

    async def presence_remove(self, room: str, conn_id: str, user_id: str, name: str) -> None:
        # forgotten here at once: the next sync removes it from Redis if this call cannot
        if self._local.pop((room, conn_id), None) is None:
            return
        self._presence_gen += 1
        try:
            self._client_or_raise()
            with self._unavailable_on_error("presence"):
                published = await self._scripts["remove"](
                    args=[self.prefix, self.node_id, room, conn_id]
                )
        except BrokerUnavailable:
            self._presence_dirty = True
            raise
        self._report(published)

    def _report(self, published: list[bytes]) -> None:
        """Hand the transitions a presence script published to the Hub's console line."""
        for i in range(0, len(published) - 1, 2):
            self.listener.presence_transition(
                published[i].decode(errors="replace"), published[i + 1]
            )

    async def members(self, room: str) -> list[Member]:
        r = self._client_or_raise()
        with self._unavailable_on_error("members"):
            names: dict[bytes, bytes] = await r.hgetall(  # type: ignore[assignment]
                self._key("presence_names:", room)
            )
        return [{"userId": u.decode(), "name": n.decode()} for u, n in names.items()]

    # --- console hooks ---------------------------------------------------------------------

    def publish_event(self, data: bytes) -> None:
        """Queue a console event for every node; the oldest is dropped when Redis lags."""
        self._events_out.append(data)
        self._events_wake.set()

    async def _pump_events(self) -> None:
        while True:
            await self._events_wake.wait()
            self._events_wake.clear()
            if self._redis is None or self._pubsub is None:
                self._events_out.clear()  # console lines may be lost; chat messages may not
                continue
            batch = list(self._events_out)
            self._events_out.clear()
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for data in batch:
                        pipe.publish(self._events, data)
                    await pipe.execute()
            except FAILURES as exc:
                log.debug("dropped %d console events: %s", len(batch), exc)

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node whose heartbeat is alive (just this one while Redis is unreachable)."""
        own = json.loads(self._info_json())
        if self._redis is None or not self.ready:
            return [own]
        try:
            ids: set[Any] = await self._redis.smembers(self._key("nodes"))
            keys = [self._key("node:") + i.decode() for i in sorted(ids)]
            values: list[Any] = await self._redis.mget(keys) if keys else []
        except FAILURES:
            return [own]
        found = [json.loads(v) for v in values if v is not None]
        return [own if n.get("id") == self.node_id else n for n in found] or [own]
