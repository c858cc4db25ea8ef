"""What group commit of publishes buys: many publishers on one node, through Redis.

    .venv/bin/python bench/redis_publish.py [publishers] [messages each] [rounds]

Starts a private redis-server on a free port (persistence off) and one RedisBroker in this
process. `publishers` coroutines each publish `messages` chat messages one after another,
each awaiting its id, as a client's reader does; first through `publish` (at most one
round trip in flight, the others queued for the next: group commit), then, for comparison
in the same run, through the publish script one call per message (what `publish` did
before), and through `publish` with a `cid` on every message (the sent-once check in the
script: a hash lookup and insert per message). Prints, per round and as medians: messages
per second, this process's CPU µs per message, and Redis's.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import free_port  # noqa: E402
from gochat.brokers.base import chat_suffix, dedupe_key
from gochat.brokers.redis import RedisBroker  # noqa: E402
from gochat.config import Settings  # noqa: E402


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def redis_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


async def measure(
    publish: Callable[[str, bytes, bytes | None], Awaitable[object]],
    publishers: int,
    messages: int,
    rpid: int,
    cids: bool = False,
) -> tuple[float, float, float]:
    async def one(p: int) -> None:
        suffix = chat_suffix({"room": f"r{p}", "userId": "u", "name": "u", "text": "x" * 64})
        for i in range(messages):
            await publish(f"r{p % 200}", suffix, dedupe_key("u", f"{p}-{i}") if cids else None)

    t0, c0, r0 = time.perf_counter(), own_cpu(), redis_cpu(rpid)
    await asyncio.gather(*(one(p) for p in range(publishers)))
    n = publishers * messages
    wall, cpu, rcpu = time.perf_counter() - t0, own_cpu() - c0, redis_cpu(rpid) - r0
    return n / wall, cpu / n * 1e6, rcpu / n * 1e6


async def main(publishers: int, messages: int, rounds: int) -> None:
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        settings = Settings(node_id="bench", redis_url=f"redis://127.0.0.1:{port}")
        broker = RedisBroker(settings)
        await broker.start()
        assert broker.ready, broker.reason

        async def unbatched(room: str, suffix: bytes, dedupe: bytes | None) -> object:
            script = broker.commands.scripts["publish"]
            keys = broker.publisher.publish_keys(room)
            return await script(keys=keys, args=broker.publisher.publish_args(room, suffix))

        results: dict[str, list[tuple[float, float, float]]] = {
            "batched": [],
            "with cid": [],
            "per message": [],
        }
        for r in range(rounds):
            for name, fn in (
                ("batched", broker.publish),
                ("with cid", broker.publish),
                ("per message", unbatched),
            ):
                trips = broker.publish_round_trips
                rate, us, rus = await measure(
                    fn, publishers, messages, server.pid, cids=name == "with cid"
                )
                results[name].append((rate, us, rus))
                per_batch = publishers * messages / max(1, broker.publish_round_trips - trips)
                extra = (
                    f", {per_batch:.1f} messages per round trip" if name != "per message" else ""
                )
                print(
                    f"round {r + 1} {name:12s} {rate:9,.0f} msg/s  node {us:6.1f} µs/msg  "
                    f"redis {rus:5.1f} µs/msg{extra}"
                )
        med = {
            k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in results.items()
        }
        b, p, c = med["batched"], med["per message"], med["with cid"]
        print(
            f"median of {rounds}: batched {b[0]:,.0f} msg/s, node {b[1]:.1f} µs/msg, redis "
            f"{b[2]:.1f} µs/msg; per message {p[0]:,.0f} msg/s, node {p[1]:.1f} µs/msg, "
            f"redis {p[2]:.1f} µs/msg; node CPU ratio {b[1] / p[1]:.2f}, "
            f"redis CPU ratio {b[2] / p[2]:.2f}"
        )
        print(
            f"with a cid (sent-once check): {c[0]:,.0f} msg/s, node {c[1]:.1f} µs/msg, redis "
            f"{c[2]:.1f} µs/msg; against batched without: node x{c[1] / b[1]:.2f}, "
            f"redis x{c[2] / b[2]:.2f}"
        )
        await broker.stop()
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(args + [200, 50, 3][len(args) :])))
