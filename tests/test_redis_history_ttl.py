"""A room's history stream in Redis expires GOCHAT_HISTORY_TTL after its last message (before:
never, so every room ever used kept up to GOCHAT_HISTORY messages in Redis for good). The
publish script sets the TTL in the same call as its XADD; a `since` into a stream that has
expired gets `recovered: false`."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from .cluster import nodes
from .redis_server import RedisServer
from .util import connect, join, recv_type

pytestmark = pytest.mark.redis

TTL = 600  # seconds


async def test_each_publish_sets_the_history_streams_ttl(
    redis_server: RedisServer, make_chat: Any
) -> None:
    (n1,) = await nodes(make_chat, redis_server, "n1", history_ttl=TTL)
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        a, _ = await connect(n1, "a")
        await join(a, "r")
        key = "gochat:history:{r}"
        await a.send_json({"type": "chat", "room": "r", "text": "one"})
        first = (await recv_type(a, "chat"))["id"]
        assert 0 < await r.pttl(key) <= TTL * 1000

        await r.pexpire(key, 5_000)  # as if most of the TTL had gone by
        await a.send_json({"type": "chat", "room": "r", "text": "two"})
        await recv_type(a, "chat")
        assert 5_000 < await r.pttl(key) <= TTL * 1000  # set again by the publish

        await r.pexpire(key, 0)  # the stream expires (a TTL of 0 deletes the key at once)
        assert await r.exists(key) == 0
        b, _ = await connect(n1, "b")
        jb = await join(b, "r", since=first)
        assert jb["recovered"] is False and jb["history"] == []
        await a.send_json({"type": "chat", "room": "r", "text": "three"})
        assert (await recv_type(a, "chat"))["text"] == "three"  # a fresh stream, with a TTL
        assert 0 < await r.pttl(key) <= TTL * 1000
    finally:
        await r.aclose()


async def test_a_history_ttl_of_0_never_expires_the_stream(
    redis_server: RedisServer, make_chat: Any
) -> None:
    (n1,) = await nodes(make_chat, redis_server, "n1", history_ttl=0)
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        a, _ = await connect(n1, "a")
        await join(a, "r")
        await a.send_json({"type": "chat", "room": "r", "text": "kept"})
        await recv_type(a, "chat")
        assert await r.xlen("gochat:history:{r}") == 1
        assert await r.pttl("gochat:history:{r}") == -1  # exists, no TTL
    finally:
        await r.aclose()
