"""What the event tap costs the chat path: N chat messages through a real server, with no
console watching, with one console watching every event, and with one whose filter drops
them all. Run: .venv/bin/python bench/tap_cost.py [N] [ROUNDS]

Client and server share one process and one core, so the figures are end-to-end wall time
of the whole round trip (send, validate, publish, deliver, write, receive); what matters is
the difference between the rows.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import timeit

import aiohttp
from aiohttp import web

from gochat.app import create_app
from gochat.config import Settings
from gochat.events import EventTap

TOKEN = "bench-token"


async def run_once(n: int, mode: str) -> float:
    settings = Settings(node_id="bench", rate=0, admin_token=TOKEN, history=100)
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with aiohttp.ClientSession() as http:
        viewer = None
        drained = 0
        drain_task = None
        if mode != "none":
            viewer = await http.ws_connect(
                base + "/admin/events", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            await viewer.receive()  # hello
            if mode == "filtered-out":
                await viewer.send_json({"type": "filter", "kinds": []})

            async def drain() -> None:
                nonlocal drained
                async for msg in viewer:
                    drained += len(json.loads(msg.data).get("events", ()))

            drain_task = asyncio.create_task(drain())
        a = await http.ws_connect(base + "/ws?name=a")
        b = await http.ws_connect(base + "/ws?name=b")
        for ws in (a, b):
            await ws.receive()
            await ws.send_json({"type": "join", "room": "bench"})
        for ws in (a, b):
            while json.loads((await ws.receive()).data)["type"] != "joined":
                pass
        await asyncio.sleep(0.2)
        start = time.perf_counter()

        async def send() -> None:
            for i in range(n):
                await a.send_str(json.dumps({"type": "chat", "room": "bench", "text": f"m{i}"}))

        sender = asyncio.create_task(send())
        got = 0
        while got < n:
            data = json.loads((await b.receive()).data)
            if data["type"] == "chat":
                got += 1
        elapsed = time.perf_counter() - start
        await sender
        for ws in (a, b):
            await ws.close()
        if viewer is not None and drain_task is not None:
            await viewer.close()
            await drain_task
    await runner.cleanup()
    return elapsed


async def main(n: int, rounds: int) -> None:
    tap = EventTap("x")
    idle = min(timeit.repeat(lambda: tap.emit("PUBLISH", "a", "b", "c"), number=200_000, repeat=5))
    print(f"tap.emit with no sink attached: {idle / 200_000 * 1e9:.0f} ns per call")
    print(f"{n} chat messages, sender -> server -> receiver, best of {rounds}:")
    results: dict[str, float] = {}
    for mode in ("none", "watching", "filtered-out"):
        results[mode] = min([await run_once(n, mode) for _ in range(rounds)])
    base = results["none"]
    for mode, t in results.items():
        print(
            f"  console {mode:13s} {t * 1000:8.1f} ms  {n / t:9.0f} msg/s  "
            f"{(t - base) / n * 1e6:+6.1f} us/msg  ({(t / base - 1) * 100:+.1f}%)"
        )


if __name__ == "__main__":
    asyncio.run(
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 5000,
            int(sys.argv[2]) if len(sys.argv) > 2 else 5,
        )
    )
