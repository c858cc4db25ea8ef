"""Helpers shared by the tests: test settings, connect, receive with a timeout, wait for a
frame type."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from gochat.config import Settings

TIMEOUT = 5.0
ANY_UID = re.compile(r"[A-Za-z0-9_-]{8,64}")
ROOT = Path(__file__).resolve().parent.parent  # the repository's root

Chat = TestClient[Any, Any]  # a client on one in-process gochat app (a "node")


def make_settings(**overrides: Any) -> Settings:
    """Test settings: a fixed node id, no rate limit unless asked, short grace."""
    values: dict[str, Any] = {"node_id": "test-node", "rate": 0, "shutdown_grace": 2}
    values.update(overrides)
    return Settings(**values)


def uid_of(name: str) -> str:
    """The `uid` `connect` sends for an anonymous `name`: one user per name, as a browser
    keeps one id across its tabs."""
    return f"user-{name}".ljust(8, "_")


def anon(name: str) -> dict[str, str]:
    """The query of an anonymous user called `name` whose id is `uid_of(name)`."""
    return {"name": name, "uid": uid_of(name)}


async def connect(
    client: TestClient[Any, Any], name: str | None = None, **query: str
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Open /ws and return the socket and its `welcome` frame. With a `name` that can be
    part of a uid and no `uid` of its own, the user's id is `uid_of(name)`."""
    params = dict(query)
    if name is not None:
        params["name"] = name
        if "uid" not in params and "token" not in params and ANY_UID.fullmatch(uid_of(name)):
            params["uid"] = uid_of(name)
    ws = await client.ws_connect("/ws", params=params)
    welcome = await recv(ws)
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next frame as JSON; fails the test on a close or after `timeout`."""
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def recv_type(
    ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = TIMEOUT
) -> dict[str, Any]:
    """Skip frames until one of type `kind` arrives (presence noise etc.)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv(ws, timeout)
            if frame["type"] == kind:
                return frame


async def join(ws: aiohttp.ClientWebSocketResponse, room: str, **extra: Any) -> dict[str, Any]:
    """Join `room` and return the `joined` reply."""
    await ws.send_json({"type": "join", "room": room, **extra})
    return await recv_type(ws, "joined")


async def expect_close(ws: aiohttp.ClientWebSocketResponse, timeout: float = TIMEOUT) -> int | None:
    """Read until the server closes; return the close code."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.ERROR,
            ):
                return ws.close_code


async def until(condition: Any, timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Wait until `condition()` is true (checked every 10 ms); fail after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def nothing_more(ws: aiohttp.ClientWebSocketResponse, wait: float = 0.2) -> None:
    """Assert no frame arrives within `wait` seconds (only where absence is the point)."""
    try:
        msg = await ws.receive(timeout=wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame {msg.type} {msg.data!r}")


def vanish(ws: aiohttp.ClientWebSocketResponse) -> None:
    """The peer just goes away: its TCP connection is aborted, with no close frame.

    aiohttp's client has no public way to reach its transport, so this is the tests' one
    use of a private name of aiohttp (the server's are in gochat/aiohttp_internals.py).
    """
    ws._response.connection.transport.abort()  # type: ignore[union-attr]


def parse_http_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of the final response in `data`, any interim
    `100 Continue` skipped."""
    while data.startswith(b"HTTP/1.1 100"):
        data = data.partition(b"\r\n\r\n")[2]
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(lines[0].split(" ", 2)[1]), headers, body
