"""The Python cost of one chat message inside gochat, without sockets or a kernel.

    .venv/bin/python bench/hub_path.py [MEMBERS] [N]
    .venv/bin/python bench/hub_path.py 10 20000 --profile   # where it goes (cProfile)

One Hub on the in-memory broker, MEMBERS clients in one room with transports that only
count their writes, and N chat frames through the same path a real frame takes after
aiohttp has parsed it (`ws.take_inline`, called from the reader's data callback: decode,
validate, publish, fan out) plus the Outbox flush. What it leaves out: aiohttp's frame
reader, the event loop, and the kernel's `send`, which are most of a real delivery's cost
(docs/performance.md, S2). A tight loop keeps everything in the CPU's caches, so in a
server with thousands of connections the same code costs more.
"""

from __future__ import annotations

import asyncio
import cProfile
import logging
import pstats
import sys
import time

from gochat.brokers import create_broker
from gochat.client import Client
from gochat.config import Settings
from gochat.events import EventTap
from gochat.hub import Hub
from gochat.ws import take_inline

FRAME = '{"type":"chat","room":"r","text":"seq=1;p=0;t=1234567890;' + "." * 28 + '"}'


class CountingTransport:
    """Takes every write at once, as a socket whose peer keeps up would."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


async def main(members: int, n: int, profile: bool) -> None:
    settings = Settings(node_id="bench", rate=0, admin_token="x" * 32)
    broker = create_broker(settings)
    hub = Hub(settings, broker, EventTap("bench"))
    await broker.start()
    clients = []
    for i in range(members):
        transport: asyncio.Transport = CountingTransport()  # type: ignore[assignment]
        client = Client(hub.next_conn_id(), f"u{i}", f"u{i}", f"127.0.0.1:{i}", None, transport)
        hub.connect(client)
        await hub.join(client, "r", None)
        clients.append(client)
    hub.outbox.flush()

    async def run() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            if not take_inline(hub, clients[i % members], FRAME):
                raise AssertionError("the chat was not taken inline")
            hub.outbox.flush()
        return (time.perf_counter() - t0) / n * 1e6

    await run()  # warm up
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        await run()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        return
    runs = sorted([await run() for _ in range(5)])
    print(
        f"{members} members: {runs[2]:.2f} us per message (median of 5; "
        f"{runs[0]:.2f}-{runs[-1]:.2f}), {runs[2] / members:.2f} us per delivery"
    )
    await broker.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # not the broker's "stopped" at the end
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    asyncio.run(
        main(
            int(args[0]) if args else 10,
            int(args[1]) if len(args) > 1 else 20000,
            "--profile" in sys.argv,
        )
    )
