"""Operations-console helpers shared by the tests: the console token, the event stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from .util import TIMEOUT, Chat

TOKEN = "test-admin-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def open_stream(client: Chat, **headers: str) -> aiohttp.ClientWebSocketResponse:
    """Open /admin/events (with BEARER unless `headers` are given); check its `hello`."""
    ws = await client.ws_connect("/admin/events", headers=headers or BEARER)
    hello = json.loads((await ws.receive(timeout=TIMEOUT)).data)
    assert hello["type"] == "hello" and "PUBLISH" in hello["kinds"]
    return ws


async def events_until(
    ws: aiohttp.ClientWebSocketResponse, done: Any, timeout: float = TIMEOUT
) -> list[dict[str, Any]]:
    """Collect stream events until `done(events)` is true."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not done(seen):
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            data = json.loads(msg.data)
            if data["type"] == "events":
                seen.extend(data["events"])
    return seen


def has_kind(kind: str, **match: str) -> Any:
    """A `done` for `events_until`: an event of `kind` whose fields equal `match`."""
    return lambda evs: any(
        e["kind"] == kind and all(e.get(k) == v for k, v in match.items()) for e in evs
    )
