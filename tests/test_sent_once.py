"""Sent once, whatever the network does: a chat whose `cid` its sender already published in
that room (within the history window) is not published again; the sender alone gets the
first message back, same id. In memory and across nodes on Redis."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gochat.keys import BROKER, HUB

from .cluster import HasUrl, nodes
from .conftest import MakeChat
from .redis_server import RedisServer
from .util import Chat, connect, join, nothing_more, recv_type

Ws = aiohttp.ClientWebSocketResponse


async def say(ws: Ws, room: str, text: str, cid: str) -> dict[str, Any]:
    """Send a chat and return the chat frame that carries its cid back."""
    await ws.send_json({"type": "chat", "room": room, "text": text, "cid": cid})
    while True:
        frame = await recv_type(ws, "chat")
        if frame.get("cid") == cid:
            return frame


async def check_once(sender_node: Chat, again_node: Chat, watcher_node: Chat) -> None:
    """The rule, with the sender's second try from `again_node` (a reconnect)."""
    watcher, _ = await connect(watcher_node, "watcher")
    await join(watcher, "r")
    sender, _ = await connect(sender_node, "sender")
    await join(sender, "r")
    await recv_type(watcher, "presence")
    first = await say(sender, "r", "hello", "c-1")
    assert (await recv_type(watcher, "chat"))["id"] == first["id"]

    # the same cid again, on this connection and on a new one (as after a drop): the first
    # message comes back, same id and text, to the sender alone
    assert await say(sender, "r", "hello (resent)", "c-1") == first
    again, _ = await connect(again_node, "sender")
    await join(again, "r")
    assert await say(again, "r", "hello", "c-1") == first
    # what a later message shows: the watcher got nothing in between
    later = await say(sender, "r", "next", "c-2")
    assert (await recv_type(watcher, "chat"))["id"] == later["id"]
    history = (await join(watcher, "r"))["history"]
    assert [m["cid"] for m in history] == ["c-1", "c-2"]

    # another user's c-1, or the sender's c-1 in another room, is another message
    other, _ = await connect(sender_node, "other")
    await join(other, "r")
    theirs = await say(other, "r", "mine too", "c-1")
    assert theirs["id"] != first["id"]
    await join(sender, "elsewhere")
    assert (await say(sender, "elsewhere", "hello", "c-1"))["id"] != first["id"]


async def test_a_cid_is_published_once_in_memory(make_chat: MakeChat) -> None:
    chat = await make_chat()
    await check_once(chat, chat, chat)
    assert chat.app[HUB].stats.repeated == 2


async def test_a_cid_is_published_again_once_its_message_left_the_history(
    make_chat: MakeChat,
) -> None:
    chat = await make_chat(history=2)
    ws, _ = await connect(chat, "sender")
    await join(ws, "r")
    first = await say(ws, "r", "one", "c-1")
    assert (await say(ws, "r", "again", "c-1"))["id"] == first["id"]
    for i in range(2):
        await say(ws, "r", f"pushes it out {i}", f"p-{i}")
    fresh = await say(ws, "r", "one, later", "c-1")
    assert fresh["id"] != first["id"] and fresh["text"] == "one, later"


async def test_many_cids_keep_the_memory_bounded(make_chat: MakeChat) -> None:
    chat = await make_chat(history=3)
    ws, _ = await connect(chat, "sender")
    await join(ws, "r")
    for i in range(50):
        await say(ws, "r", "x", f"c-{i}")
    room = chat.app[BROKER]._rooms["r"]  # the memory broker's record of the room
    assert len(room.history) == 3 and len(room.cids) <= 2 * 3 + 1


@pytest.mark.redis
async def test_a_cid_is_published_once_across_nodes(any_redis: HasUrl, make_chat: MakeChat) -> None:
    n1, n2 = await nodes(make_chat, any_redis, "n1", "n2")
    await check_once(n1, n2, n2)
    assert n1.app[HUB].stats.repeated == 1 and n2.app[HUB].stats.repeated == 1


@pytest.mark.redis
async def test_a_burst_of_one_cid_in_one_pipeline_is_one_message(
    any_redis: HasUrl, make_chat: MakeChat
) -> None:
    """Resends in one group commit: the script runs them in order, the first one wins."""
    n1, n2 = await nodes(make_chat, any_redis, "n1", "n2")
    watcher, _ = await connect(n2, "watcher")
    await join(watcher, "r")
    ws, _ = await connect(n1, "sender")
    await join(ws, "r")
    for i in range(5):
        await ws.send_json({"type": "chat", "room": "r", "text": f"try {i}", "cid": "same"})
    answers = [await recv_type(ws, "chat") for _ in range(5)]
    assert {a["id"] for a in answers} == {answers[0]["id"]}
    assert {a["text"] for a in answers} == {"try 0"}
    await recv_type(watcher, "presence")
    assert (await recv_type(watcher, "chat"))["text"] == "try 0"
    await nothing_more(watcher)


@pytest.mark.redis
async def test_the_cids_hash_is_pruned_and_expires_with_the_stream(
    redis_server: RedisServer, make_chat: MakeChat
) -> None:
    (n1,) = await nodes(make_chat, redis_server, "n1", history=3, history_ttl=60)
    ws, _ = await connect(n1, "sender")
    await join(ws, "r")
    for i in range(300):  # past what MAXLEN ~ 3 lets the stream keep (a macro node: 100)
        await say(ws, "r", "x", f"c-{i}")
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        held = max(3, await r.xlen("gochat:history:{r}"))  # MAXLEN ~ may keep more
        assert 0 < await r.hlen("gochat:cids:{r}") <= 2 * held + 1 < 300
        assert 0 < await r.pttl("gochat:cids:{r}") <= 60_000
    finally:
        await r.aclose()
