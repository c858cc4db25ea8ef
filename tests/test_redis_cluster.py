"""gochat on a Redis Cluster (3 masters, 3 replicas): the fixture, the key layout, sharded
pub/sub, presence across slots and a master's failover."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from gochat.keys import BROKER

from .cluster import nodes
from .redis_cluster import RedisCluster, key_slot
from .util import connect, join, recv_type

pytestmark = pytest.mark.redis


async def test_the_cluster_comes_up(redis_cluster: RedisCluster) -> None:
    assert len(redis_cluster.masters()) == 3
    for port in redis_cluster.procs:
        info = redis_cluster.info(port)
        assert info["cluster_state"] == "ok" and info["cluster_slots_assigned"] == "16384"
    r = aioredis.RedisCluster.from_url(redis_cluster.url)
    try:
        for key in ("a", "b", "c", "{lobby}x"):
            await r.set(key, "1")
        assert await r.get("{lobby}x") == b"1"
        assert r.keyslot("gochat:history:{lobby}") == key_slot("x{lobby}") == key_slot("lobby")
    finally:
        await r.aclose()


async def test_gochat_detects_the_cluster_and_shards_its_rooms(
    redis_cluster: RedisCluster, make_chat: Any
) -> None:
    """Any node's URL: the broker finds the cluster, publishes with SPUBLISH on the shard
    that owns the room, and every key of the room sits in the room's slot."""
    n1, n2 = await nodes(make_chat, redis_cluster, "n1", "n2")
    assert n1.app[BROKER].cluster_mode
    a, _ = await connect(n1, "a")
    b, _ = await connect(n2, "b")
    for room in ("lobby", "side", "third"):
        await join(a, room)
        await join(b, room)
        await a.send_json({"type": "chat", "room": room, "text": "hi", "cid": room})
        for ws in (a, b):
            got = await recv_type(ws, "chat")
            assert got["room"] == room and got["cid"] == room
    r = aioredis.RedisCluster.from_url(redis_cluster.url)
    try:
        keys = [bytes(k).decode() async for k in r.scan_iter(match=b"gochat:*")]
        for key in keys:
            if "{nodes}" in key:
                continue
            room = key[key.index("{") + 1 : key.index("}")]
            assert room in ("lobby", "side", "third"), key
        assert {k for k in keys if k.startswith("gochat:history:")} == {
            "gochat:history:{lobby}",
            "gochat:history:{side}",
            "gochat:history:{third}",
        }
        # sharded channels: each room's on the master that owns its slot
        for room in ("lobby", "side", "third"):
            channel = f"gochat:room:{{{room}}}"
            port = redis_cluster.master_of(key_slot(channel))
            node = r.get_node("127.0.0.1", port)
            assert node is not None
            numsub = await r.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=node)
            assert list(numsub) == [(channel.encode(), 2)], numsub
    finally:
        await r.aclose()
