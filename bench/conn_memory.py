"""Where gochat's per-connection memory goes: tracemalloc over N idle connections.

    .venv/bin/python bench/conn_memory.py [N]

The clients run in a child process, so only the server's allocations are counted.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import tracemalloc

from aiohttp import web

from gochat.app import create_app
from gochat.config import Settings

CLIENT = """
import asyncio, aiohttp, sys
async def main(port, n):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        socks = []
        for i in range(n):
            ws = await s.ws_connect(f"http://127.0.0.1:{port}/ws?name=u{i}")
            await ws.receive()
            await ws.send_str('{"type":"join","room":"r%d"}' % (i % 200))
            await ws.receive()
            socks.append(ws)
        print("ready", flush=True)
        await asyncio.sleep(60)
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


async def main(n: int) -> None:
    settings = Settings(node_id="mem", rate=0, admin_token="x" * 32, handshake_timeout=0)
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), str(n), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    await proc.stdout.readline()
    gc.collect()
    stats = tracemalloc.take_snapshot().compare_to(before, "filename")
    print(f"{sum(st.size_diff for st in stats) / n:8.0f} B per connection in all")
    for st in stats[:12]:
        name = "/".join(st.traceback[0].filename.split("/")[-2:])
        print(f"{st.size_diff / n:8.0f} B  {st.count_diff / n:5.1f} objects  {name}")
    proc.kill()
    await proc.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
