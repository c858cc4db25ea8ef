"""gochat on a Redis Cluster (3 masters, 3 replicas): the fixture, the key layout, sharded
pub/sub, presence across slots and a master's failover."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from .redis_cluster import RedisCluster, key_slot

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
