"""Connection churn leaves nothing behind: tasks, file descriptors, memory, Hub entries."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import resource
import struct
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gochat.aiohttp_internals import http_parser_released
from gochat.chat.client import Client
from gochat.keys import BROKER, HUB

from .util import anon, join, recv, until, vanish

CYCLES = 10_000
BATCH = 100  # connections open at once


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def churn(chat: TestClient[Any, Any], cycles: int) -> None:
    # a plain session: TestClient.ws_connect keeps every socket it made until teardown
    url = str(chat.make_url("/ws"))
    async with aiohttp.ClientSession() as session:
        for start in range(0, cycles, BATCH):
            await _batch(chat, session, url, start)


async def _batch(
    chat: TestClient[Any, Any], session: aiohttp.ClientSession, url: str, start: int
) -> None:
    sockets = []
    for i in range(start, start + BATCH):
        ws = await session.ws_connect(url, params=anon(f"u{i % 50}"))
        assert (await recv(ws))["type"] == "welcome"
        await join(ws, f"room{i % 7}")
        sockets.append(ws)
    for n, ws in enumerate(sockets):
        if n % 2:
            await ws.close()
        else:  # abrupt: the TCP connection just goes away
            vanish(ws)
            await ws.close()
    hub = chat.app[HUB]
    await until(lambda: not hub.clients, timeout=10, what="the batch to be forgotten")


@pytest.mark.slow
async def test_10k_connect_disconnect_cycles_return_to_baseline(chat: TestClient[Any, Any]) -> None:
    hub = chat.app[HUB]
    await churn(chat, 1000)  # warm up caches, pools and allocator arenas
    gc.collect()
    tasks0, fds0, rss0 = len(asyncio.all_tasks()), open_fds(), rss_kib()
    await churn(chat, CYCLES)
    await until(lambda: len(asyncio.all_tasks()) <= tasks0, what="tasks to finish")
    gc.collect()
    tasks1, fds1, rss1 = len(asyncio.all_tasks()), open_fds(), rss_kib()
    print(f"tasks {tasks0}->{tasks1} fds {fds0}->{fds1} rss {rss0}->{rss1} KiB")
    assert tasks1 <= tasks0
    assert fds1 <= fds0 + 2  # the test client's connector may keep a socket or two
    assert rss1 - rss0 < 8 * 1024, f"RSS grew {rss1 - rss0} KiB over {CYCLES} cycles"

    # aiohttp's heartbeat timer used to keep abruptly dropped sockets alive for 25 s
    def server_sockets() -> int:
        gc.collect()
        return sum(isinstance(o, web.WebSocketResponse) for o in gc.get_objects())

    await until(lambda: server_sockets() == 0, what="every server-side socket to be freed")
    assert not hub.clients and not hub.rooms and not hub.memberships.joining and not hub.per_ip
    broker = chat.app[BROKER]
    for r in range(7):
        assert await broker.members(f"room{r}") == []


async def test_upgraded_connection_drops_its_http_parser_and_queue(
    chat: TestClient[Any, Any],
) -> None:
    """An idle WebSocket does not keep aiohttp's HTTP parser (~1.7 KB with the request's
    header lists) nor its own queue of pipelined requests (~0.76 KB), and bytes sent right
    behind the upgrade request still reach the reader."""
    reader, writer = await asyncio.open_connection("127.0.0.1", chat.port)
    key = base64.b64encode(os.urandom(16)).decode()
    payload = b'{"type":"join","room":"lobby"}'
    mask = os.urandom(4)
    frame = struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask
    frame += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    request = (
        f"GET /ws?name=eager HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    writer.write(request.encode() + frame)  # the upgrade request and the first frame at once
    try:
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        hub = chat.app[HUB]
        await until(lambda: any(c.rooms for c in hub.clients.values()), what="joined")
        (client,) = hub.clients.values()
        assert client.transport is not None
        assert http_parser_released(client.transport.get_protocol())
    finally:
        writer.close()


async def test_closed_connections_are_freed_without_the_cycle_collector(
    chat: TestClient[Any, Any],
) -> None:
    """A connection that ends, with a close frame or without, leaves no reference cycle
    holding its server-side objects: they are freed by reference counting at once, not at
    the next full collection (which pauses every connection for tens of ms), so dead
    connections do not pile up between full collections (docs/performance.md, S2)."""
    server_types = (Client, web.WebSocketResponse, web.Request, web.RequestHandler)
    url = str(chat.make_url("/ws"))

    def handlers_running() -> bool:
        return any(
            getattr(t.get_coro(), "__qualname__", "") == "RequestHandler.start"
            for t in asyncio.all_tasks()
        )

    async with aiohttp.ClientSession() as session:
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for i in range(10):
                ws = await session.ws_connect(url, params=anon(f"u{i}"))
                assert (await recv(ws))["type"] == "welcome"
                await join(ws, "lobby")
                await ws.send_json({"type": "chat", "room": "lobby", "text": "bye"})
                assert (await recv(ws))["type"] == "chat"
                if i % 2:
                    await ws.close()
                else:  # abrupt: the TCP connection just goes away
                    vanish(ws)
                    await ws.close()
            await until(lambda: not handlers_running(), what="every /ws handler to return")
            gc.collect()
            leaked = [type(o).__name__ for o in gc.garbage if isinstance(o, server_types)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert leaked == [], leaked
