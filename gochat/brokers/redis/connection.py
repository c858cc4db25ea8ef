"""What every part of the Redis broker shares: the command connections, the scripts
registered on them, the names of keys and channels, and what a failure means.

The broker (broker.py) opens the commands at start and closes them at stop; the parts only
send through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..base import Broker, BrokerUnavailable
from . import scripts

log = logging.getLogger("gochat.brokers.redis")

# Command connections per node (opened as needed); more requests wait for one (blocking
# pool), up to COMMAND_TIMEOUT. A join is three round trips; with 32, a storm of 500 joins
# on a busy node (S4's set-up) queued past the timeout and 1 run in 3 had joins refused.
POOL_SIZE = 128
COMMAND_TIMEOUT = 2.0  # a hanging Redis fails a request after this long, never blocks it

# Errors that mean "Redis is not reachable now", as opposed to a bug in a script.
UNREACHABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    TimeoutError,
)
FAILURES: tuple[type[BaseException], ...] = (RedisError, *UNREACHABLE)

SCRIPTS = {
    "publish": scripts.PUBLISH,
    "add": scripts.PRESENCE_ADD,
    "remove": scripts.PRESENCE_REMOVE,
    "sync": scripts.PRESENCE_SYNC,
    "drop": scripts.PRESENCE_DROP,
    "heartbeat": scripts.HEARTBEAT,
    "reap": scripts.REAP,
    "reaped": scripts.REAPED,
    "nodes": scripts.NODES,
}

Client = Redis | RedisCluster
"""A command client: one Redis, or every master of a Redis Cluster (routed by key slot)."""


def reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"redis unreachable: {text[:160]}"


async def cancel_all(tasks: list[asyncio.Task[None]], report: bool = True) -> None:
    """Cancel `tasks` and wait for them, cancelling again any that is still running; log
    the error of one that failed (`report=False`: the caller had its errors already, they
    are only retrieved).

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
            if not task.cancelled() and task.exception() is not None and report:
                log.error("redis task %s failed", task.get_name(), exc_info=task.exception())


@contextlib.contextmanager
def unavailable_on_error(what: str) -> Iterator[None]:
    """Turn Redis failures into BrokerUnavailable (the client is told, never ignored)."""
    try:
        yield
    except UNREACHABLE as exc:
        raise BrokerUnavailable(reason(exc)) from exc
    except RedisError as exc:
        log.error("redis %s failed: %r", what, exc)
        raise BrokerUnavailable(f"redis error in {what}") from exc


def client_name(node_id: str, role: str) -> str:
    return re.sub(r"[^!-~]", "_", f"gochat:{node_id}:{role}")


# Both kinds of client: no retries inside redis-py (a failed command is reported, never
# silently re-run, which could append a chat twice), timeouts on every command, no
# per-command health check (the listener probes).
_CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": False,
    "retry": Retry(NoBackoff(), 0),
    "socket_timeout": COMMAND_TIMEOUT,
    "socket_connect_timeout": COMMAND_TIMEOUT,
    "socket_keepalive": True,
    "health_check_interval": 0,
}


def client(url: str, node_id: str, role: str) -> Redis:
    # No retries inside redis-py: a failed command is reported (never silently re-run,
    # which could append a chat twice), and reconnection is the listener's job.
    # Named `gochat:<node>:<role>`, so CLIENT LIST tells whose connection is whose.
    # A blocking pool: a burst of requests (a join storm) queues for a connection, up to
    # the command timeout, instead of failing with "Too many connections" (redis-py's
    # plain pool refuses past 100), which also cost the node its readiness.
    name = client_name(node_id, role)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=COMMAND_TIMEOUT, client_name=name, **_CLIENT_OPTIONS
    )
    return Redis.from_pool(pool)


def cluster_client(url: str, node_id: str, role: str) -> RedisCluster:
    """A Redis Cluster client: commands go to the master of their keys' slot. No retries,
    as for one Redis (a script whose reply was lost is never run twice); a MOVED or ASK
    answer is followed (the command did not run), and a connection error or CLUSTERDOWN is
    reported to the caller as `unavailable` while the cluster fails over."""
    return RedisCluster.from_url(
        url, max_connections=POOL_SIZE, client_name=client_name(node_id, role), **_CLIENT_OPTIONS
    )


async def cluster_enabled(url: str) -> bool:
    """Whether the Redis at `url` is a node of a Redis Cluster (`INFO cluster`)."""
    probe = Redis.from_url(
        url,
        socket_timeout=COMMAND_TIMEOUT,
        socket_connect_timeout=COMMAND_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        info: dict[str, Any] = await probe.info("cluster")
    finally:
        await probe.aclose()
    return bool(info.get("cluster_enabled"))


class Commands:
    """The node's command connections (a pool) and the scripts registered on them."""

    def __init__(self, broker: Broker, url: str) -> None:
        self._broker = broker  # read only: its node id, prefix and readiness
        self.url = url
        self.prefix = broker.key_prefix
        pre = self.prefix.encode()
        self.room_prefix = pre + b"room:"
        self.events_channel = pre + b"events"
        self.redis: Client | None = None  # set between connect and close
        self.scripts: dict[str, Any] = {}
        self.stopped = False
        # None until the first connection tells (INFO cluster); then for good
        self.cluster: bool | None = None
        # the command that publishes on a room's channel: sharded on a cluster
        self.publish_command = "PUBLISH"

    def key(self, *parts: str) -> str:
        return self.prefix + "".join(parts)

    def room_key(self, kind: str, room: str) -> str:
        """A room's key: `{P}{kind}:{{room}}`; every key and the channel of a room share
        the hash tag `{room}`, so on a cluster they live in one slot (one shard)."""
        return f"{self.prefix}{kind}:{{{room}}}"

    def room_channel(self, room: str) -> bytes:
        return self.room_prefix + b"{" + room.encode() + b"}"

    def node_keys(self) -> list[str]:
        """The node table's keys (nodes, alive, info): one hash tag, one slot."""
        table = self.prefix + "{nodes}"
        return [table, table + ":alive", table + ":info"]

    async def connect(self) -> Client:
        """The command client, made on the first successful connection, once it is known
        whether the URL is a single Redis or a cluster node."""
        if self.redis is not None:
            return self.redis
        if self.cluster is None:
            self.cluster = await cluster_enabled(self.url)
            if self.cluster:
                if "{" in self.prefix or "}" in self.prefix:
                    raise ValueError("GOCHAT_PREFIX must not hold { or } on a Redis Cluster")
                self.publish_command = "SPUBLISH"
                log.info("redis cluster mode: rooms on sharded pub/sub")
        if self.cluster:
            self.redis = cluster_client(self.url, self._broker.node_id, "cmd")
        else:
            self.redis = client(self.url, self._broker.node_id, "cmd")
        for name, source in SCRIPTS.items():
            self.scripts[name] = self.redis.register_script(source)
        return self.redis

    async def run_scripts(self, name: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run script `name` once per (keys, args), pipelined: one round trip (on a cluster,
        one per master, in parallel); the first error is raised. A script cache Redis lost
        (a restart, SCRIPT FLUSH, a replica just promoted) is loaded and the calls sent again
        (a NOSCRIPT call did not run)."""
        redis = self.redis
        if redis is None:
            raise BrokerUnavailable("stopped")
        if not calls:
            return []
        script = self.scripts[name]
        for attempt in (1, 2):
            try:
                async with redis.pipeline(transaction=False) as pipe:
                    for keys, args in calls:
                        pipe.evalsha(script.sha, len(keys), *keys, *args)
                    results: list[Any] = await pipe.execute()
                return results
            except NoScriptError:
                if attempt == 2:
                    raise
                await redis.script_load(script.script)
        raise AssertionError("unreachable")

    def refuse(self) -> None:
        """From now on every request is refused: the node is stopping."""
        self.stopped = True

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        self.redis = None

    def usable(self) -> Client:
        """The command client when this node can serve requests, else BrokerUnavailable."""
        if self.stopped or self.redis is None:
            raise BrokerUnavailable("stopped")
        if not self._broker.ready:
            raise BrokerUnavailable(self._broker.reason)
        return self.redis
