"""The group-commit publisher: chat messages go to the publish script (XADD + PUBLISH) in
batches, one pipelined round trip per batch, each message's future getting its id."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from ..base import CHAT_PREFIX, BrokerUnavailable, Repeat
from .connection import COMMAND_TIMEOUT, UNREACHABLE, Commands, cancel_all, log, reason

Batch = list[tuple[str, bytes, bytes | None, asyncio.Future[bytes]]]


class Publisher:
    """Group commit of chat messages: while one publish round trip is on its way, the next
    messages wait here and then go together in one pipeline (see submit)."""

    def __init__(self, commands: Commands, history_size: int, history_ttl: int = 0) -> None:
        self._commands = commands
        self._history_size = history_size
        self._history_ttl_ms = history_ttl * 1000  # the stream's TTL, set by each publish
        self._publishing = False
        self._send_scheduled = False
        self._outgoing: Batch = []
        self._batches: set[asyncio.Task[None]] = set()
        self.round_trips = 0

    def submit(
        self, room: str, suffix: bytes, dedupe: bytes | None = None
    ) -> asyncio.Future[bytes]:
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
        self._commands.usable()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._outgoing.append((room, suffix, dedupe, fut))
        if not self._publishing and not self._send_scheduled:
            self._send_scheduled = True
            loop.call_soon(self._send_outgoing)
        return fut

    async def drain(self) -> None:
        """At stop: let the chat messages on their way land, within the timeout."""
        if self._batches:
            await asyncio.wait(set(self._batches), timeout=COMMAND_TIMEOUT + 1)
            await self.abort()

    async def abort(self) -> None:
        """Give up the batches still waiting for Redis (their senders are gone)."""
        await cancel_all(list(self._batches))

    def _send_outgoing(self) -> None:
        """Send what queued up as one batch, unless a round trip is still on its way."""
        self._send_scheduled = False
        if self._publishing or not self._outgoing:
            return
        batch, self._outgoing = self._outgoing, []
        self._publishing = True
        self.round_trips += 1
        task = asyncio.get_running_loop().create_task(self._publish_batch(batch))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _publish_batch(self, batch: Batch) -> None:
        """Publish a batch in one round trip; hand each message its id or its error."""
        try:
            if self._commands.stopped:
                raise BrokerUnavailable("stopped")
            if len(batch) == 1:
                room, suffix, dedupe, _ = batch[0]
                results: list[Any] = [
                    await self._commands.scripts["publish"](
                        keys=self.publish_keys(room), args=self.publish_args(room, suffix, dedupe)
                    )
                ]
            else:
                results = await self._pipeline_publish(batch)
        except BaseException as exc:
            failure = self._unavailable(exc)
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._publishing = False
            self._send_outgoing()
        for (*_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(self._unavailable(result))
            elif isinstance(result, list):  # {id, suffix}: that cid was published already
                fut.set_result(Repeat(CHAT_PREFIX + result[0] + result[1]))
            else:
                fut.set_result(result)

    def _unavailable(self, exc: BaseException) -> BrokerUnavailable:
        """A publish failure as the Hub sees it (what unavailable_on_error does for the
        requests that are awaited)."""
        if isinstance(exc, BrokerUnavailable):
            return exc
        if isinstance(exc, UNREACHABLE):
            err = BrokerUnavailable(reason(exc))
        elif isinstance(exc, RedisError):
            log.error("redis publish failed: %r", exc)
            err = BrokerUnavailable("redis error in publish")
        else:
            err = BrokerUnavailable("stopped")
        err.__cause__ = exc
        return err

    async def _pipeline_publish(self, batch: Batch) -> list[Any]:
        redis = self._commands.redis
        assert redis is not None
        script = self._commands.scripts["publish"]
        results: list[Any] = [None] * len(batch)
        todo = list(range(len(batch)))
        for attempt in (1, 2):
            async with redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    room, suffix, dedupe, _ = batch[i]
                    args = self.publish_args(room, suffix, dedupe)
                    pipe.evalsha(script.sha, 2, *self.publish_keys(room), *args)
                answers = await pipe.execute(raise_on_error=False)
            for i, answer in zip(todo, answers, strict=True):
                results[i] = answer
            # Redis lost its script cache (a restart, SCRIPT FLUSH): load it, send those again
            todo = [i for i in todo if isinstance(results[i], NoScriptError)]
            if not todo or attempt == 2:
                break
            await redis.script_load(script.script)
        return results

    def publish_keys(self, room: str) -> list[str]:
        """The publish script's keys for `room`: its stream and its cids hash."""
        key = self._commands.room_key
        return [key("history", room), key("cids", room)]

    def publish_args(self, room: str, suffix: bytes, dedupe: bytes | None = None) -> list[Any]:
        """The publish script's arguments for one message (no dedupe without history)."""
        size = self._history_size
        channel = self._commands.room_channel(room)
        key = dedupe if dedupe is not None and size else b""
        ttl = self._history_ttl_ms
        command = self._commands.publish_command
        return ["~" if size else "=", size, suffix, channel, CHAT_PREFIX, ttl, key, command]
