"""Every row of the contract's error and close tables, over a real WebSocket.

Each test sends the offending input, asserts the exact frame or close code, then shows the
same connection (or, after a close, the server) still serving others.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gochat.chat import ws as ws_module
from gochat.chat.auth import mint
from gochat.keys import BROKER, HUB

from .conftest import MakeChat
from .rawws import RawWS
from .util import anon, connect, expect_close, join, recv, recv_type, uid_of, until

# the contract holds on the shortcuts through aiohttp and on its public API alike
pytestmark = pytest.mark.both_fast_paths


async def assert_serving(chat: TestClient[Any, Any], ws: Any | None = None) -> None:
    """The connection (when given) and the server still work: a chat round trip."""
    if ws is None:
        ws, _ = await connect(chat, "prober")
        await join(ws, "probe")
        room = "probe"
    else:
        room = "lobby"
        await join(ws, room)
    await ws.send_json({"type": "chat", "room": room, "text": "alive"})
    frame = await recv_type(ws, "chat")
    assert frame["text"] == "alive"


async def error_for(ws: Any, payload: Any) -> dict[str, Any]:
    if isinstance(payload, str):
        await ws.send_str(payload)
    else:
        await ws.send_json(payload)
    frame = await recv_type(ws, "error")
    return frame


@pytest.mark.parametrize(
    ("payload", "code", "ref"),
    [
        ("not json", "bad_json", None),
        ("[1, 2]", "bad_json", None),
        ('{"type": "chat", "room": "lobby", "text": NaN}', "bad_json", None),
        ('{"type": "join", "room": "a", "room": "b"}', "bad_json", None),
        ('{"type":"chat","room":"lobby","text":"a","text":null}', "bad_json", None),
        ('{"type": "chat", "room": "lobby", "text": "\\ud800"}', "bad_message", "chat"),
        ({"type": "chat", "room": "lobby"}, "bad_message", "chat"),
        ({"type": "chat", "room": "lobby", "text": 5, "cid": "k1"}, "bad_message", "k1"),
        ({"type": "chat", "room": "lobby", "text": "   "}, "bad_message", "chat"),
        ({"type": "chat", "room": "lobby", "text": "\x1b[2J", "cid": "e1"}, "bad_message", "e1"),
        ({"type": "chat", "room": "lobby", "text": "\u202egnp.exe"}, "bad_message", "chat"),
        ({"type": "join", "room": {"a": {"b": {"c": {"d": 1}}}}}, "bad_message", "join"),
        ({"type": "zap"}, "unknown_type", None),
        ({"room": "lobby"}, "unknown_type", None),
        ({"type": "join", "room": "no spaces!"}, "bad_room", "join"),
        ({"type": "join", "room": "x" * 65}, "bad_room", "join"),
        ({"type": "chat", "room": "elsewhere", "text": "hi", "cid": "c9"}, "not_in_room", "c9"),
        ({"type": "leave", "room": "elsewhere"}, "not_in_room", "leave"),
    ],
)
async def test_error_frames(
    chat: TestClient[Any, Any], payload: Any, code: str, ref: str | None
) -> None:
    ws, _ = await connect(chat, "tester")
    frame = await error_for(ws, payload)
    assert frame["code"] == code, frame
    assert frame.get("ref") == ref, frame
    assert isinstance(frame["message"], str) and frame["message"]
    await assert_serving(chat, ws)


async def test_too_long(make_chat: MakeChat) -> None:
    chat = await make_chat(max_text=10)
    ws, _ = await connect(chat, "t")
    await join(ws, "lobby")
    await ws.send_json({"type": "chat", "room": "lobby", "text": "x" * 10})
    assert (await recv(ws))["text"] == "x" * 10
    frame = await error_for(ws, {"type": "chat", "room": "lobby", "text": "x" * 11, "cid": "L"})
    assert frame["code"] == "too_long" and frame["ref"] == "L"
    await assert_serving(chat, ws)


async def test_too_many_rooms(make_chat: MakeChat) -> None:
    chat = await make_chat(max_rooms=2)
    ws, _ = await connect(chat, "t")
    await join(ws, "r1")
    await join(ws, "r2")
    frame = await error_for(ws, {"type": "join", "room": "r3"})
    assert frame["code"] == "too_many_rooms" and frame["ref"] == "join"
    await ws.send_json({"type": "leave", "room": "r2"})
    assert await recv_type(ws, "left") == {"type": "left", "room": "r2"}
    await assert_serving(chat, ws)  # joins lobby: allowed again


async def test_rate_limited_then_policy_close(
    make_chat: MakeChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws_module, "RATE_GRACE", 0.5)
    chat = await make_chat(rate=2)  # burst of 4
    ws, _ = await connect(chat, "flood")
    for _ in range(6):
        await ws.send_str("{}")
    codes = [(await recv_type(ws, "error"))["code"] for _ in range(6)]
    assert codes.count("rate_limited") >= 2 and codes[:4] == ["unknown_type"] * 4
    other, _ = await connect(chat, "bystander")
    # keep flooding past the grace: the server closes with 1008
    async with asyncio.timeout(10):
        while not ws.closed:
            try:
                await ws.send_str("{}")
            except ConnectionError:
                break
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.CLOSE:
                break
    assert ws.close_code == 1008
    await assert_serving(chat, other)


async def test_rate_limited_errors_say_which_frame_they_refuse(make_chat: MakeChat) -> None:
    """Refused over the rate, before it is decoded: a chat by its cid (or `chat`), a join or
    leave by its type, so a client can tell which of its requests failed."""
    chat = await make_chat(rate=0.5)  # a burst of 1, then one frame per 2 s
    ws, _ = await connect(chat, "hasty")
    for _ in range(1):  # the burst
        await ws.send_json({"type": "join", "room": "r"})
    frames: list[Any] = [
        {"type": "chat", "room": "r", "text": "x", "cid": "c-9"},
        {"type": "chat", "room": "r", "text": 'say "type":"join"'},
        {"type": "join", "room": "r2"},
        {"room": "r", "type": "leave"},
        {"type": "nope"},
    ]
    for frame in frames:
        await ws.send_json(frame)
    errors: list[dict[str, Any]] = []
    while len(errors) < len(frames):
        msg = await recv(ws)
        if msg["type"] == "error":
            errors.append(msg)
    assert [(e["code"], e.get("ref")) for e in errors] == [
        ("rate_limited", "c-9"),
        ("rate_limited", "chat"),
        ("rate_limited", "join"),
        ("rate_limited", "leave"),
        ("rate_limited", None),
    ]


async def test_unavailable_when_broker_is_down(chat: TestClient[Any, Any]) -> None:
    ws, _ = await connect(chat, "t")
    await join(ws, "lobby")
    await chat.app[BROKER].stop()
    frame = await error_for(ws, {"type": "chat", "room": "lobby", "text": "lost?", "cid": "u1"})
    assert frame["code"] == "unavailable" and frame["ref"] == "u1"
    await chat.app[BROKER].start()
    await ws.send_json({"type": "chat", "room": "lobby", "text": "back"})
    assert (await recv_type(ws, "chat"))["text"] == "back"


async def test_unauthorized_room_and_tokens(make_chat: MakeChat) -> None:
    secret = "s3cret-for-tests-0123456789abcdef"
    chat = await make_chat(auth_secret=secret)
    token = mint(secret, "u-1", "Ursula", rooms=["lobby"])
    ws, welcome = await connect(chat, token=token, uid="someone-else")  # the token decides
    assert welcome["userId"] == "u-1" and welcome["name"] == "Ursula"
    frame = await error_for(ws, {"type": "join", "room": "secret"})
    assert frame["code"] == "unauthorized" and frame["ref"] == "join"
    await assert_serving(chat, ws)
    for bad in (
        "",
        "garbage",
        mint("another-secret-0123456789abcdefghij", "u-2"),
        mint(secret, "u-3", ttl=-10),
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await chat.ws_connect("/ws", params={"token": bad} if bad else {})
        assert info.value.status == 401


async def test_token_expiry_closes_1008(make_chat: MakeChat) -> None:
    secret = "s3cret-for-tests-0123456789abcdef"
    chat = await make_chat(auth_secret=secret)
    ws, _ = await connect(chat, token=mint(secret, "short", ttl=1.0))
    assert await expect_close(ws, timeout=5) == 1008


async def test_binary_frame_closes_1003(chat: TestClient[Any, Any]) -> None:
    ws, _ = await connect(chat, "bin")
    await ws.send_bytes(b"\x00\x01")
    assert await expect_close(ws) == 1003
    await assert_serving(chat)


async def test_frame_too_big_closes_1009(make_chat: MakeChat) -> None:
    chat = await make_chat(max_frame=1024)
    ws, _ = await connect(chat, "big")
    await ws.send_str(json.dumps({"type": "chat", "room": "lobby", "text": "x" * 2000}))
    assert await expect_close(ws) == 1009
    await assert_serving(chat)


async def test_internal_error_closes_1011(
    chat: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = chat.app[HUB]
    ws, _ = await connect(chat, "victim")
    await join(ws, "lobby")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected fault")

    # say_now: the chat is handled inline (aiohttp_internals.InlineQueue), and `say` calls it too
    monkeypatch.setattr(hub.publisher, "say_now", broken)
    await ws.send_json({"type": "chat", "room": "lobby", "text": "boom"})
    assert await expect_close(ws) == 1011
    monkeypatch.undo()
    await until(lambda: not hub.clients, what="the failed connection to be forgotten")
    await assert_serving(chat)


async def test_kick_closes_4001_with_reason(chat: TestClient[Any, Any]) -> None:
    hub = chat.app[HUB]
    ws, welcome = await connect(chat, "kicked")
    (client,) = hub.clients.values()
    hub.drop(client, 4001, "behave")
    assert await expect_close(ws) == 4001
    raw = await asyncio.to_thread(RawWS, "127.0.0.1", chat.port or 0, "/ws?name=raw&uid=user-raw")
    assert raw.status == 101
    await until(lambda: len(hub.clients) == 1, what="the raw client")
    (client,) = hub.clients.values()
    hub.drop(client, 4001, "behave")
    opcode, payload = await asyncio.to_thread(lambda: _skip_to_close(raw))
    assert payload[:2] == (4001).to_bytes(2, "big") and payload[2:] == b"behave"
    raw.close()
    await assert_serving(chat)


def _skip_to_close(raw: RawWS) -> tuple[int, bytes]:
    while True:
        opcode, payload = raw.read_frame()
        if opcode == 0x8:
            return opcode, payload


async def test_slow_consumer_closed_1013_others_unaffected(make_chat: MakeChat) -> None:
    # 256 KiB of unsent bytes: a fast reader sharing this busy event loop never lags that far
    chat = await make_chat(send_buffer=64, max_text=10_000)
    hub = chat.app[HUB]
    port = chat.port or 0
    # a reader with a 4 KiB receive buffer that joins and then never reads
    slow = await asyncio.to_thread(RawWS, "127.0.0.1", port, "/ws?name=slow&uid=user-slow", 4096)
    await asyncio.to_thread(slow.send_frame, b'{"type":"join","room":"lobby"}')
    await until(lambda: "lobby" in hub.rooms and len(hub.rooms["lobby"]) == 1, what="slow join")
    fast, _ = await connect(chat, "fast")
    await join(fast, "lobby")
    sender, _ = await connect(chat, "sender")
    await join(sender, "lobby")
    text = "y" * 8000
    count = 1500  # ~12 MB: far more than the kernel buffers (tcp_wmem max 4 MiB) hold
    received = 0

    async def read_fast() -> None:
        nonlocal received
        while received < count:
            frame = await recv(fast)
            if frame["type"] == "chat":
                assert frame["text"] == text + str(received)
                received += 1

    async def drain_sender() -> None:  # the sender is a member too: it must keep up
        while True:
            await sender.receive()

    reader = asyncio.create_task(read_fast())
    drainer = asyncio.create_task(drain_sender())
    for i in range(count):
        await sender.send_json({"type": "chat", "room": "lobby", "text": text + str(i)})
    await asyncio.wait_for(reader, timeout=30)
    drainer.cancel()
    assert received == count
    assert hub.stats.slow_consumer_closes == 1
    code, _ = await asyncio.to_thread(slow.read_until_close)
    assert code == 1013
    slow.close()
    await until(lambda: len(hub.clients) == 2, what="the slow client to be forgotten")
    assert {c.name for c in hub.clients.values()} == {"fast", "sender"}


async def test_origin_check(make_chat: MakeChat) -> None:
    chat = await make_chat(allowed_origins="https://app.example.com")
    own = f"http://{chat.host}:{chat.port}"
    for origin, allowed in [
        ("https://evil.example", False),
        ("http://localhost.evil.example", False),
        (own, True),
        ("https://app.example.com", True),
        (None, True),
    ]:
        headers = {"Origin": origin} if origin else {}
        if allowed:
            ws = await chat.ws_connect("/ws", headers=headers)
            assert (await recv(ws))["type"] == "welcome"
            await ws.close()
        else:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await chat.ws_connect("/ws", headers=headers)
            assert info.value.status == 403


async def test_bad_name_refused_400(chat: TestClient[Any, Any]) -> None:
    for name in ("x" * 33, "bell\x07"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await chat.ws_connect("/ws", params={"name": name})
        assert info.value.status == 400
    ws, welcome = await connect(chat)
    assert welcome["name"].startswith("guest-")


async def test_conn_per_ip_429(make_chat: MakeChat) -> None:
    chat = await make_chat(max_conn_per_ip=2)
    a, _ = await connect(chat, "a")
    b, _ = await connect(chat, "b")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await chat.ws_connect("/ws", params=anon("c"))
    assert info.value.status == 429
    await a.close()
    await until(lambda: len(chat.app[HUB].clients) == 1, what="a to be gone")
    c, _ = await connect(chat, "c")


async def test_heartbeat_drops_dead_peer(make_chat: MakeChat) -> None:
    chat = await make_chat(heartbeat=0.2)
    hub = chat.app[HUB]
    watcher, _ = await connect(chat, "watcher")
    await join(watcher, "lobby")
    # a peer that never answers pings (autoping off, and we never read)
    dead = await chat.ws_connect("/ws", params=anon("dead"), autoping=False)
    await dead.send_json({"type": "join", "room": "lobby"})
    online = await recv_type(watcher, "presence")
    assert online["userId"] == uid_of("dead") and online["status"] == "online"
    offline = await recv_type(watcher, "presence", timeout=5)
    assert offline["userId"] == uid_of("dead") and offline["status"] == "offline"
    assert [c.name for c in hub.clients.values()] == ["watcher"]


async def test_heartbeat_keeps_a_quiet_peer_that_answers_pings(make_chat: MakeChat) -> None:
    """One sweep pings every quiet connection (heartbeat.py): a peer that sends nothing
    but answers each ping stays, ping after ping, and its pong is all it takes."""
    chat = await make_chat(heartbeat=0.2)
    hub = chat.app[HUB]
    quiet = await chat.ws_connect("/ws", params=anon("quiet"), autoping=False)
    assert (await recv(quiet))["type"] == "welcome"
    await quiet.send_json({"type": "join", "room": "lobby"})
    assert (await recv(quiet))["type"] == "joined"
    pings = 0
    while pings < 4:  # 4 pings: at least 0.8 s, far past the 0.35 s a silent peer gets
        msg = await quiet.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.PING, msg
        pings += 1
        await quiet.pong(msg.data)
    assert [c.name for c in hub.clients.values()] == ["quiet"]
    await assert_serving(chat, quiet)


async def test_client_ping_gets_its_pong(make_chat: MakeChat) -> None:
    chat = await make_chat()
    ws = await chat.ws_connect("/ws", params=anon("pinger"), autoping=False)
    assert (await recv(ws))["type"] == "welcome"
    await ws.ping(b"are you there")
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"are you there")
    await assert_serving(chat, ws)
