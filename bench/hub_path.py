"""The Python cost of one chat message inside gochat, without sockets or a kernel.

    .venv/bin/python bench/hub_path.py [MEMBERS] [N]
    .venv/bin/python bench/hub_path.py 10 20000 --profile   # where it goes (cProfile)
    .venv/bin/python bench/hub_path.py 10 --opcodes         # bytecodes per message, by function

One Hub on the in-memory broker, with the app's metrics, on uvloop as in production;
MEMBERS clients in one room whose sockets are /dev/null (a write that the kernel takes at
once and does nothing with), and N chat frames through the same path a real frame takes
after aiohttp has parsed it (`ws.take_inline`, called from the reader's data callback:
decode, validate, publish, fan out) plus the Outbox flush. What it leaves out: aiohttp's
frame reader, the event loop, and the kernel's work for a real `send`, which are most of
a real delivery's cost (docs/performance.md, S2). A tight loop keeps everything in the
CPU's caches, so in a server with thousands of connections the same code costs more, and
on a shared machine its timings vary from minute to minute; `--opcodes` counts the
interpreter's bytecodes instead (`sys.settrace` with opcode events), which is the same on
every run of the same code: a way to compare two versions of the path without noise.
"""

from __future__ import annotations

import asyncio
import collections
import cProfile
import logging
import os
import pstats
import sys
import time
from types import FrameType
from typing import Any

from gochat.brokers import create_broker
from gochat.chat.client import Client
from gochat.chat.hub import Hub
from gochat.chat.ws import take_inline
from gochat.config import Settings
from gochat.console.metrics import Metrics
from gochat.events import EventTap

FRAME = '{"type":"chat","room":"r","text":"seq=1;p=0;t=1234567890;' + "." * 28 + '"}'


class CountingTransport:
    """Takes every write at once, as a socket whose peer keeps up would (the Outbox writes
    to the client's fd itself while the transport holds nothing, so this sees few)."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def count_opcodes(step: Any, n: int) -> None:
    """Run `step()` n times under an opcode tracer; print bytecodes per call, by function."""
    counts: collections.Counter[str] = collections.Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            code = frame.f_code
            counts[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
        return tracer

    sys.settrace(tracer)
    try:
        for _ in range(n):
            step()
    finally:
        sys.settrace(None)
    print(f"{sum(counts.values()) / n:.0f} bytecodes per message; by function:")
    for name, count in counts.most_common(15):
        print(f"{count / n:8.1f}  {name}")


async def main(members: int, n: int, profile: bool, opcodes: bool) -> None:
    settings = Settings(node_id="bench", rate=0, admin_token="x" * 32)
    broker = create_broker(settings)
    hub = Hub(settings, broker, EventTap("bench"))
    Metrics(hub, broker)  # as the app has: the fan-out latency is observed per message
    await broker.start()
    devnull = os.open(os.devnull, os.O_WRONLY)
    clients = []
    for i in range(members):
        transport: asyncio.Transport = CountingTransport()  # type: ignore[assignment]
        client = Client(hub.next_conn_id(), f"u{i}", f"u{i}", f"127.0.0.1:{i}", None, transport)
        client.fd = devnull  # what a plain socket transport gives (FastPaths.direct_fd)
        hub.connect(client)
        await hub.memberships.join(client, "r", None)
        clients.append(client)
    hub.flush()

    async def run() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            if not take_inline(hub, clients[i % members], FRAME):
                raise AssertionError("the chat was not taken inline")
            hub.flush()
        return (time.perf_counter() - t0) / n * 1e6

    await run()  # warm up
    if opcodes:

        def step() -> None:
            take_inline(hub, clients[0], FRAME)
            hub.flush()

        count_opcodes(step, 100)
    elif profile:
        prof = cProfile.Profile()
        prof.enable()
        await run()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    else:
        runs = sorted([await run() for _ in range(5)])
        print(
            f"{members} members: {runs[2]:.2f} us per message (median of 5; "
            f"{runs[0]:.2f}-{runs[-1]:.2f}), {runs[2] / members:.2f} us per delivery"
        )
    await broker.stop()
    os.close(devnull)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # not the broker's "stopped" at the end
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    try:
        import uvloop

        run_loop: Any = uvloop.run  # the loop production runs on (GOCHAT_EVENT_LOOP=auto)
    except ImportError:
        run_loop = asyncio.run
    run_loop(
        main(
            int(args[0]) if args else 10,
            int(args[1]) if len(args) > 1 else 20000,
            "--profile" in sys.argv,
            "--opcodes" in sys.argv,
        )
    )
