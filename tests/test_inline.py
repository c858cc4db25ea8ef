"""The read side's shortcut (aiohttp_internals' inline reader, ws.take_inline): chat frames
handled in aiohttp's data callback while the read loop waits, never ahead of an earlier one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient

from gochat.keys import HUB

from .conftest import MakeChat
from .rawws import RawWS
from .util import connect, join, recv, recv_type


async def test_a_chat_is_taken_inline(chat: TestClient[Any, Any]) -> None:
    hub = chat.app[HUB]
    ws, _ = await connect(chat, "quick")
    await join(ws, "lobby")
    for i in range(3):
        await ws.send_json({"type": "chat", "room": "lobby", "text": f"m{i}", "cid": str(i)})
        assert (await recv_type(ws, "chat"))["cid"] == str(i)
    assert hub.stats.inline == 3
    (client,) = hub.clients.values()
    assert client.msgs_in == 4  # the join through the read loop, three chats inline
    # refused inline is still answered: a room it is not in
    await ws.send_json({"type": "chat", "room": "elsewhere", "text": "x", "cid": "n"})
    err = await recv_type(ws, "error")
    assert (err["code"], err["ref"]) == ("not_in_room", "n")


async def test_without_the_shortcut_frames_take_the_read_loop(make_chat: MakeChat) -> None:
    chat = await make_chat(fast_paths=False)
    hub = chat.app[HUB]
    ws, _ = await connect(chat, "plain")
    await join(ws, "lobby")
    await ws.send_json({"type": "chat", "room": "lobby", "text": "hello"})
    assert (await recv_type(ws, "chat"))["text"] == "hello"
    assert hub.stats.inline == 0


async def test_frames_read_in_one_chunk_keep_their_order(chat: TestClient[Any, Any]) -> None:
    """A chat right behind a join (or a leave) in the same read must not overtake it: the
    join is still being handled by the read loop when the chat is parsed."""
    watcher, _ = await connect(chat, "watcher")
    await join(watcher, "lobby")
    raw = await asyncio.to_thread(RawWS, "127.0.0.1", chat.port or 0, "/ws?name=raw")
    assert raw.status == 101
    frames = [
        {"type": "join", "room": "lobby"},
        *({"type": "chat", "room": "lobby", "text": f"t{i}", "cid": str(i)} for i in range(50)),
        {"type": "leave", "room": "lobby"},
        {"type": "chat", "room": "lobby", "text": "late", "cid": "late"},
    ]
    await asyncio.to_thread(raw.send_frames, *(json.dumps(f).encode() for f in frames))

    def read_reply() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "error":
            opcode, payload = raw.read_frame()
            assert opcode == 0x1, (opcode, payload)
            seen.append(json.loads(payload))
        return seen

    seen = await asyncio.to_thread(read_reply)
    kinds = [f["type"] for f in seen if f["type"] != "presence"]
    assert kinds[0] == "welcome" and kinds[1] == "joined", kinds
    assert [f["cid"] for f in seen if f["type"] == "chat"] == [str(i) for i in range(50)]
    assert kinds[-2:] == ["left", "error"], kinds
    assert (seen[-1]["code"], seen[-1]["ref"]) == ("not_in_room", "late")
    # the watcher saw the same 50, in order, and nothing after the leave
    got: list[str] = []
    while len(got) < 50:
        frame = await recv(watcher)
        if frame["type"] == "chat":
            got.append(frame["cid"])
    assert got == [str(i) for i in range(50)]
    raw.close()
