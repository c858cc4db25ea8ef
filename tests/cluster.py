"""Several in-process gochat nodes on one real Redis or Redis Cluster: start them, ask their
readiness."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from gochat.keys import BROKER

from .util import Chat


class HasUrl(Protocol):
    """A single redis-server (RedisServer) or a Redis Cluster (RedisCluster)."""

    @property
    def url(self) -> str: ...


async def nodes(make_chat: Any, server: HasUrl, *names: str, **extra: Any) -> list[Chat]:
    """One app per name, all on `server`, each ready before it is returned."""
    apps = [await make_chat(redis_url=server.url, node_id=n, **extra) for n in names]
    for app in apps:
        assert app.app[BROKER].ready, app.app[BROKER].reason
    return apps


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
