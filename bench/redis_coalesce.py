"""Frames per write for messages that arrive through Redis (the S4 coalescing question).

    .venv/bin/python bench/redis_coalesce.py [clients] [messages]

Starts a private redis-server on a free port and two nodes in this process; clients on
node b, a publisher on node a; prints node b's Outbox frames per transport.write.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import aiohttp
import redis
from aiohttp import web

from gochat.app import create_app
from gochat.config import Settings
from gochat.keys import HUB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def joined(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_json({"type": "join", "room": "r"})
    while (await ws.receive_json())["type"] != "joined":
        pass


async def main(clients: int, messages: int) -> None:
    rport = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                redis.Redis(port=rport).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        url = f"redis://127.0.0.1:{rport}"
        runners, ports, apps = [], [], []
        for node in ("a", "b"):
            app = create_app(Settings(node_id=node, rate=0, redis_url=url, admin_token="x" * 32))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
            ports.append(port)
            apps.append(app)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            subs = []
            for i in range(clients):
                ws = await s.ws_connect(f"http://127.0.0.1:{ports[1]}/ws?name=u{i}")
                await ws.receive()
                await joined(ws)
                subs.append(ws)
            pub = await s.ws_connect(f"http://127.0.0.1:{ports[0]}/ws?name=pub")
            await pub.receive()
            await joined(pub)
            outbox = apps[1][HUB].outbox
            writes0, frames0 = outbox.writes, outbox.frames

            async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
                seen = 0
                while seen < messages:
                    if (await ws.receive_json())["type"] == "chat":
                        seen += 1

            readers = [asyncio.create_task(drain(ws)) for ws in subs]
            start = time.monotonic()
            for _ in range(messages):
                await pub.send_json({"type": "chat", "room": "r", "text": "x" * 64})
            await asyncio.gather(*readers)
            elapsed = time.monotonic() - start
            ratio = (outbox.frames - frames0) / max(1, outbox.writes - writes0)
            print(
                f"node b: {ratio:.2f} frames per write; {clients * messages / elapsed:,.0f} "
                f"deliveries/s (clients and both nodes share this process)"
            )
        for runner in runners:
            await runner.cleanup()
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*(args or [200, 2000])))
