"""Floods and impersonation found from outside (issue 17): pings count toward the rate, a
refused chat names its `cid`, and nobody anonymous passes for the system."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from gochat.chat import ws as ws_module

from .conftest import MakeChat
from .procs import Node
from .util import TIMEOUT, anon, connect, join


@pytest.mark.slow
async def test_a_ping_flood_ends_in_1008_like_any_flood() -> None:
    """Against a real process at the default rate (20/s, burst 40) and grace (5 s): 400
    pings sent at once get at most the burst's pongs, one `rate_limited`, then, while the
    flood goes on, close 1008. Before: all 400 answered, nothing refused, never closed."""
    node = await Node.start(env={"GOCHAT_RATE": "20", "GOCHAT_HEARTBEAT": "60"})
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                f"{node.url}/ws", params=anon("pinger"), autoping=False, autoclose=False
            ) as ws,
        ):
            assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "welcome"
            pongs, errors, sent = 0, [], 0
            started = time.monotonic()

            async def flood() -> None:
                nonlocal sent
                while not ws.closed:
                    await ws.ping(b"p")
                    sent += 1
                    if sent % 50 == 0:
                        await asyncio.sleep(0.05)  # a flood that goes on, not one burst

            flooding = asyncio.create_task(flood())
            try:
                async with asyncio.timeout(ws_module.RATE_GRACE + 5):
                    while True:
                        msg = await ws.receive()
                        if msg.type is aiohttp.WSMsgType.PONG:
                            pongs += 1
                        elif msg.type is aiohttp.WSMsgType.TEXT:
                            errors.append(json.loads(msg.data))
                        else:
                            break
            finally:
                flooding.cancel()
                await asyncio.gather(flooding, return_exceptions=True)
            elapsed = time.monotonic() - started
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008, msg
            assert sent > 400 and pongs <= 40 + 20 * (elapsed + 1), (sent, pongs, elapsed)
            assert [(e["code"], e["ref"]) for e in errors] == [("rate_limited", "ping")]
            assert ws_module.RATE_GRACE <= elapsed < ws_module.RATE_GRACE + 3, elapsed
    finally:
        code, err = await node.stop()
    assert code == 0, err


async def test_a_refused_chat_names_its_cid(make_chat: MakeChat) -> None:
    """Over the rate, each refused chat's `error` carries that chat's `cid` as `ref`, so a
    client can mark exactly the messages that were not sent (before: no `ref` at all)."""
    chat = await make_chat(rate=1)  # burst 2
    ws, _ = await connect(chat, "fast")
    await join(ws, "lobby")  # one token
    for i in range(6):
        await ws.send_json({"type": "chat", "room": "lobby", "text": f"m{i}", "cid": f"c{i}"})
    await ws.send_json({"type": "chat", "room": "lobby", "text": "no cid"})
    await ws.send_str('{"type": "chat", "room": "lobby", "text": "x", "cid": "\\"quoted\\""}')
    sent: list[str] = []
    refused: list[str | None] = []
    async with asyncio.timeout(TIMEOUT):
        while len(sent) + len(refused) < 8:
            frame = await ws.receive_json()
            if frame["type"] == "chat":
                sent.append(frame["cid"])
            elif frame["type"] == "error":
                assert frame["code"] == "rate_limited", frame
                refused.append(frame["ref"])
    assert sent == ["c0"]
    assert refused == ["c1", "c2", "c3", "c4", "c5", "chat", '"quoted"']


@pytest.mark.parametrize("name", ["system", " System ", "ADMIN", "operator", "Moderator", "gochat"])
async def test_reserved_names_are_refused(make_chat: MakeChat, name: str) -> None:
    """Anonymous users cannot take a name an operator notice or the server could use."""
    chat = await make_chat()
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await chat.ws_connect("/ws", params=anon(name))
    assert exc.value.status == 400


async def test_names_that_only_contain_a_reserved_one_are_fine(make_chat: MakeChat) -> None:
    chat = await make_chat()
    for name in ("systems", "admin2", "the operator"):
        ws, welcome = await connect(chat, name)
        assert welcome["name"] == name
        await ws.close()
