"""The core chat flows over real WebSockets."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gochat.keys import HUB

from .util import connect, join, nothing_more, recv, recv_type, uid_of, until, vanish

# the contract holds on the shortcuts through aiohttp and on its public API alike
pytestmark = pytest.mark.both_fast_paths


async def test_welcome_join_chat_presence(chat: TestClient[Any, Any]) -> None:
    a, wa = await connect(chat, "alice")
    assert wa == {
        "type": "welcome",
        "userId": uid_of("alice"),
        "name": "alice",
        "node": "test-node",
    }
    b, _ = await connect(chat, "bob")
    ja = await join(a, "lobby")
    assert ja["members"] == [{"userId": uid_of("alice"), "name": "alice"}]
    assert ja["history"] == [] and "recovered" not in ja
    jb = await join(b, "lobby")
    assert {m["userId"] for m in jb["members"]} == {uid_of("alice"), uid_of("bob")}
    online = await recv(a)
    assert online == {
        "type": "presence",
        "userId": uid_of("bob"),
        "name": "bob",
        "room": "lobby",
        "status": "online",
    }
    await a.send_json({"type": "chat", "room": "lobby", "text": "  hello  ", "cid": "c1"})
    got_a, got_b = await recv(a), await recv(b)
    assert got_a == got_b
    assert got_a["type"] == "chat" and got_a["text"] == "hello" and got_a["cid"] == "c1"
    assert got_a["userId"] == uid_of("alice") and isinstance(got_a["ts"], int) and got_a["id"]
    await b.send_json({"type": "leave", "room": "lobby"})
    assert await recv(b) == {"type": "left", "room": "lobby"}
    offline = await recv(a)
    assert offline["type"] == "presence" and offline["status"] == "offline"
    await nothing_more(b)


async def test_two_tabs_are_one_member(chat: TestClient[Any, Any]) -> None:
    watcher, _ = await connect(chat, "watcher")
    await join(watcher, "room1")
    tab1, _ = await connect(chat, "carol")
    tab2, _ = await connect(chat, "carol")
    await join(tab1, "room1")
    assert (await recv(watcher))["status"] == "online"
    j2 = await join(tab2, "room1")
    assert [m["userId"] for m in j2["members"]].count(uid_of("carol")) == 1
    await tab1.close()
    # still online through tab2: the next frame the watcher sees is the chat, not offline
    await tab2.send_json({"type": "chat", "room": "room1", "text": "still here"})
    assert (await recv(watcher))["type"] == "chat"
    await tab2.close()
    last = await recv(watcher)
    assert (
        last["type"] == "presence"
        and last["status"] == "offline"
        and last["userId"] == uid_of("carol")
    )


async def test_anonymous_uid_is_the_identity_and_the_name_only_a_name(
    chat: TestClient[Any, Any],
) -> None:
    """A browser's `uid` is the userId: a rename keeps the user, one name can be two users."""
    watcher, _ = await connect(chat, "watcher")
    await join(watcher, "r")
    carol, w1 = await connect(chat, "Carol", uid="browser-one-1234")
    assert (w1["userId"], w1["name"]) == ("browser-one-1234", "Carol")
    await join(carol, "r")
    assert (await recv(watcher))["userId"] == "browser-one-1234"
    # a second tab of the same browser, renamed: the same member, nobody sees it come online
    renamed, w2 = await connect(chat, "Carol R.", uid="browser-one-1234")
    assert w2["userId"] == "browser-one-1234"
    joined = await join(renamed, "r")
    assert [m["userId"] for m in joined["members"]].count("browser-one-1234") == 1
    # another person who picks the same name is another member
    other, w3 = await connect(chat, "Carol", uid="browser-two-5678")
    await join(other, "r")
    online = await recv_type(watcher, "presence")
    assert (online["userId"], online["name"], online["status"]) == (
        "browser-two-5678",
        "Carol",
        "online",
    )
    members = (await join(watcher, "r"))["members"]
    assert sorted(m["userId"] for m in members if m["name"].startswith("Carol")) == [
        "browser-one-1234",
        "browser-two-5678",
    ]


async def test_uid_is_generated_when_absent_and_refused_when_malformed(
    chat: TestClient[Any, Any],
) -> None:
    _, a = await connect(chat, "same")
    _, b = await connect(chat, "same", uid="x" * 22)
    fresh = await recv(await chat.ws_connect("/ws", params={"name": "same"}))
    assert re.fullmatch(r"[A-Za-z0-9_-]{8,64}", fresh["userId"])
    assert fresh["userId"] not in (a["userId"], b["userId"], "same")
    for bad in ("short", "x" * 65, "has space1", "ünïcode-1", "dot.dot.dot"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await chat.ws_connect("/ws", params={"name": "n", "uid": bad})
        assert info.value.status == 400, bad


async def test_history_and_since(make_chat: Any) -> None:
    chat = await make_chat(history=3)
    a, _ = await connect(chat, "a")
    await join(a, "r")
    ids = []
    for i in range(5):
        await a.send_json({"type": "chat", "room": "r", "text": f"m{i}"})
        ids.append((await recv_type(a, "chat"))["id"])
    assert len(set(ids)) == 5
    b, _ = await connect(chat, "b")
    jb = await join(b, "r")
    assert [m["text"] for m in jb["history"]] == ["m2", "m3", "m4"]
    assert "recovered" not in jb
    c, _ = await connect(chat, "c")
    jc = await join(c, "r", since=ids[3])
    assert [m["id"] for m in jc["history"]] == [ids[4]] and jc["recovered"] is True
    d, _ = await connect(chat, "d")
    jd = await join(d, "r", since=ids[0])  # fell out of the ring of 3
    assert [m["text"] for m in jd["history"]] == ["m2", "m3", "m4"] and jd["recovered"] is False
    e, _ = await connect(chat, "e")
    je = await join(e, "r", since=ids[4])  # nothing new
    assert je["history"] == [] and je["recovered"] is True


async def test_no_state_left_after_disconnects(chat: TestClient[Any, Any]) -> None:
    hub = chat.app[HUB]
    keep, _ = await connect(chat, "keeper")
    await join(keep, "stay")
    for i in range(30):
        ws, _ = await connect(chat, f"u{i % 7}")
        await join(ws, "stay")
        await join(ws, f"room{i}")
        if i % 2:
            await ws.close()
        else:  # abrupt: drop the TCP connection without a close frame
            vanish(ws)
    await until(lambda: len(hub.clients) == 1, what="every churned connection to be gone")
    assert [c.name for c in hub.clients.values()] == ["keeper"]
    assert set(hub.rooms) == {"stay"}
    assert list(hub.rooms["stay"].values())[0].user_id == uid_of("keeper")
    assert not hub.memberships.joining
    members = await hub.broker.members("stay")
    assert members == [{"userId": uid_of("keeper"), "name": "keeper"}]
