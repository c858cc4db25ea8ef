"""S7: S4's two-node fan-out on a 3-master Redis Cluster against the same on one private Redis,
and the same pair with many rooms spread over the cluster's shards.

    .venv/bin/python bench/run.py --scenario S7 --s4-rates 400 --repeat 3

For each of `--s4-rates`: two gochat nodes, the clients dealt round-robin over them, all in
one room, client 0 (on the first node) publishing (S4, `loadgen.run_fanout`), once on a
private `redis-server` ("redis") and once on a Redis Cluster of 3 masters and 3 replicas
started by `tests/redis_cluster.py`'s launcher ("cluster"). One room is one hash slot, so on
the cluster it lives on one master (and its replica). Then, once per round, S2's load on the
same two deployments ("redis-200rooms", "cluster-200rooms"): 200 rooms of 10 clients, 5 on
each node, every client publishing, `--s2-rate` msg/s in all; the rooms hash to slots all over
the cluster, so each master carries about a third of them.

Every redis-server of the deployment (1, or 6) is pinned to the servers' core with the two
nodes, as in S4, and its CPU over the window is measured (`aux_pids`: `redis`, or
`redis_master1..3` and `redis_replica<n>`, the replica of master n). Besides the fan-out
fields each result has `redis_cpu_s` (their sum), `redis_cpu_util`, `redis_us_per_delivery`
and `redis_us_per_message` (that sum per delivery and per message of the window),
`redis_max_cpu_util` with `redis_busiest` (the busiest one: on one core, the shard that
would saturate first on machines of their own), `redis_room_shard` (the master of S4's
room) and `redis_idle_cpu_util` (their CPU over 3 s with the nodes up and no client yet:
heartbeats, probes, the cluster bus; it dominates the per-message figures at low rates).
In even rounds the cluster runs first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from bench import loadgen
from bench.run import SERVER_CORE, Options, _bounded, _child_setup, _meta, deploy

if TYPE_CHECKING:
    from tests.redis_cluster import RedisCluster

REDIS_KINDS = ("redis", "cluster")
ROOMS, PER_ROOM = 200, 10  # the many-rooms variant: S2's rooms
ROOM = "bench"  # the one room
IDLE_S = 3.0  # the Redis processes' CPU is also measured this long before any client comes


def server_name(redis: str, rooms: int) -> str:
    """The result's `server`: "redis", "cluster", "redis-200rooms", "cluster-200rooms"."""
    return redis if rooms == 1 else f"{redis}-{rooms}rooms"


@contextlib.contextmanager
def redis_cluster(core: int | None) -> Iterator[RedisCluster]:
    """A Redis Cluster (3 masters, 3 replicas; tests/redis_cluster.py), each process pinned to
    `core` and killed with this process if it dies; stopped on the way out."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise RuntimeError("S7 needs redis-server and redis-cli on PATH")
    from tests.redis_cluster import RedisCluster  # the tests' launcher (imports pytest)

    cluster = RedisCluster(preexec_fn=functools.partial(_child_setup, core))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def cluster_roles(cluster: RedisCluster) -> dict[str, int]:
    """The port of every process of the cluster by its role at the start: redis_master1..3
    (by port), redis_replica<n> the replica of redis_master<n>."""
    from tests.redis_cluster import _command

    masters = cluster.masters()
    roles = {f"redis_master{n}": p for n, p in enumerate(masters, 1)}
    for port in cluster.ports:
        if port not in masters:
            info = _command(port, "INFO", "replication").decode(errors="replace")
            found = re.search(r"master_port:(\d+)", info)
            if found is None or int(found[1]) not in masters:
                raise RuntimeError(f"redis-server on {port}: no master in {info!r}")
            roles[f"redis_replica{masters.index(int(found[1])) + 1}"] = port
    return roles


def room_shard(cluster: RedisCluster, roles: dict[str, int], room: str) -> str:
    """The role of the master that holds `room` (its keys and channel share the slot of `room`)."""
    from tests.redis_cluster import key_slot

    port = cluster.master_of(key_slot(room))
    return next(role for role, p in roles.items() if p == port)


async def idle_cpu_util(pids: dict[str, int], seconds: float) -> float:
    """The CPU (in cores) that `pids` use together over `seconds` from now."""
    t0, cpu0 = time.monotonic(), sum(loadgen.proc_cpu_s(p) for p in pids.values())
    await asyncio.sleep(seconds)
    cpu = sum(loadgen.proc_cpu_s(p) for p in pids.values()) - cpu0
    return round(cpu / (time.monotonic() - t0), 3)


def redis_figures(res: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The Redis processes' CPU over the window, summed, per delivery and per message."""
    cpu = {k: res.get(f"{k}_cpu_s") for k in names}
    if not cpu or any(v is None for v in cpu.values()):
        return {}
    wall = res.get("window_s") or 0.0
    total = sum(v for v in cpu.values() if v is not None)
    busiest = max(cpu, key=lambda k: cpu[k] or 0.0)
    deliveries, msgs = res.get("window_deliveries") or 0, res.get("offered_msgs") or 0
    return {
        "redis_processes": len(cpu),
        "redis_cpu_s": round(total, 2),
        "redis_cpu_util": round(total / wall, 3) if wall else None,
        "redis_us_per_delivery": round(total / deliveries * 1e6, 3) if deliveries else None,
        "redis_us_per_message": round(total / msgs * 1e6, 1) if msgs else None,
        "redis_busiest": busiest,
        "redis_max_cpu_util": round((cpu[busiest] or 0.0) / wall, 3) if wall else None,
    }


async def run_s7(o: Options, rate: float, redis: str, rooms: int) -> dict[str, Any]:
    """One S7 run: two gochat nodes on "redis" (one private redis-server) or "cluster",
    with S4's one room at `rate` (rooms=1) or S2's 200 rooms at `rate` msg/s in all."""
    core = SERVER_CORE if o.pin else None
    duration = o.duration if rooms == 1 else max(o.duration, 10.0)
    warmup = o.warmup if rooms == 1 else 2.0
    budget = 180 + warmup + duration + o.drain

    async def load(urls: list[str], pids: list[int], aux: dict[str, int]) -> dict[str, Any]:
        if rooms == 1:
            return await loadgen.run_fanout(
                urls,
                clients=o.clients,
                rate=rate,
                duration=duration,
                warmup=warmup,
                probes=o.probes,
                room=ROOM,
                pids=pids,
                aux_pids=aux,
                drain_timeout=o.drain,
            )
        return await loadgen.run_many_rooms(
            urls,
            rooms=rooms,
            per_room=PER_ROOM,
            rate=rate,
            duration=duration,
            warmup=warmup,
            pids=pids,
            aux_pids=aux,
            drain_timeout=o.drain,
        )

    async def body() -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            url, aux = None, {}
            extra: dict[str, Any] = {"redis": redis}
            if redis == "cluster":  # started first, stopped last (after the nodes)
                cluster = stack.enter_context(redis_cluster(core))
                roles = cluster_roles(cluster)
                url, aux = cluster.url, {r: cluster.procs[p].pid for r, p in roles.items()}
                if rooms == 1:
                    extra["redis_room_shard"] = room_shard(cluster, roles, ROOM)
            async with deploy("gochat", o.logdir, core, nodes=2, redis_url=url) as d:
                d.aux_pids |= aux
                extra["redis_idle_cpu_util"] = await idle_cpu_util(d.aux_pids, IDLE_S)
                res = await load(d.urls, d.pids, d.aux_pids) | extra
                return res | redis_figures(res, list(d.aux_pids))

    return await _bounded(_meta("S7", server_name(redis, rooms), rate), budget, body)
