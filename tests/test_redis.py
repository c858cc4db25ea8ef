"""Several nodes on one real Redis: routing, order, presence, history, crashes and outages.

Every test starts its own redis-server (tests/redis_server.py); in-process nodes are apps
made by `make_chat` with the same REDIS_URL and different node ids.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from gochat.keys import BROKER

from .redis_server import RedisServer, free_port
from .util import connect, join, nothing_more, recv, recv_type, until

Chat = TestClient[Any, Any]


async def nodes(make_chat: Any, server: RedisServer, *names: str, **extra: Any) -> list[Chat]:
    """One app per name, all on `server`, each ready before it is returned."""
    apps = [await make_chat(redis_url=server.url, node_id=n, **extra) for n in names]
    for app in apps:
        assert app.app[BROKER].ready, app.app[BROKER].reason
    return apps


async def chats_until(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    """The next `count` chat frames (other frames skipped)."""
    return [await recv_type(ws, "chat") for _ in range(count)]


async def readyz(app: Chat) -> tuple[int, dict[str, Any]]:
    resp = await app.get("/readyz")
    return resp.status, await resp.json()


async def until_ready(app: Chat, ready: bool, timeout: float = 10.0) -> float:
    """Wait for /readyz to answer 200 (ready) or 503; return how long it took."""
    start = time.monotonic()
    async with asyncio.timeout(timeout):
        while (await readyz(app))[0] != (200 if ready else 503):
            await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_cross_node_chat_presence_members(redis_server: RedisServer, make_chat: Any) -> None:
    n1, n2, n3 = await nodes(make_chat, redis_server, "n1", "n2", "n3")
    alice, wa = await connect(n1, "alice")
    assert wa["node"] == "n1"
    await join(alice, "lobby")
    bob, _ = await connect(n2, "bob")
    jb = await join(bob, "lobby")
    assert sorted(m["userId"] for m in jb["members"]) == ["alice", "bob"]
    online = await recv(alice)
    assert online == {
        "type": "presence",
        "userId": "bob",
        "name": "bob",
        "room": "lobby",
        "status": "online",
    }
    # carol on two nodes at once: one member, one online, one offline (after both leave)
    carol1, _ = await connect(n3, "carol")
    carol2, _ = await connect(n1, "carol")
    await join(carol1, "lobby")
    for ws in (alice, bob):
        assert (await recv(ws))["userId"] == "carol"
    jc = await join(carol2, "lobby")
    assert sorted(m["userId"] for m in jc["members"]) == ["alice", "bob", "carol"]
    await nothing_more(alice)
    await nothing_more(bob)

    await alice.send_json({"type": "chat", "room": "lobby", "text": "hi all", "cid": "x1"})
    got = [await recv_type(ws, "chat") for ws in (alice, bob, carol1, carol2)]
    assert all(g == got[0] for g in got) and got[0]["cid"] == "x1" and got[0]["text"] == "hi all"
    for ws in (alice, bob, carol1, carol2):
        await nothing_more(ws)  # exactly once on every node

    await carol1.close()
    await nothing_more(alice)  # carol is still here through n1
    await carol2.close()
    for ws in (alice, bob):
        off = await recv(ws)
        assert off["userId"] == "carol" and off["status"] == "offline"
    await nothing_more(alice)
    await nothing_more(bob)


async def test_routing_subscribes_only_with_local_members(
    redis_server: RedisServer, make_chat: Any
) -> None:
    n1, n2 = await nodes(make_chat, redis_server, "n1", "n2", key_prefix="t9:")
    r = aioredis.Redis.from_url(redis_server.url)
    try:

        async def subscribers(room: str) -> int:
            counts = await r.pubsub_numsub(f"t9:room:{room}")
            return int(counts[0][1])

        a, _ = await connect(n1, "a")
        await join(a, "r1")
        assert await subscribers("r1") == 1
        b, _ = await connect(n2, "b")
        await join(b, "r1")
        assert await subscribers("r1") == 2
        await b.send_json({"type": "leave", "room": "r1"})
        await recv_type(b, "left")
        await until(lambda: True)
        await _eventually(lambda: subscribers("r1"), 1)
        await a.close()
        await _eventually(lambda: subscribers("r1"), 0)
        keys = await r.keys("*")
        assert keys and all(k.startswith(b"t9:") for k in keys), keys
        channels = await r.pubsub_channels()
        assert all(c.startswith(b"t9:") for c in channels), channels
    finally:
        await r.aclose()


async def _eventually(get: Any, want: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while (got := await get()) != want:
            await asyncio.sleep(0.02)
    assert got == want
