"""Redis faults beyond a restart (issue 6, item 5): a hanging Redis, a subscriber dropped for
lagging, garbage on a room channel. After each, every node is ready again with exactly one
subscriber connection, and no client got a frame that is not a valid message.

Covered in tests/test_redis.py and not repeated here:
- the subscriber connections alone killed (CLIENT KILL TYPE pubsub):
  test_readiness_follows_the_subscriber_connection, part 1;
- a subscription that has gone deaf while its socket looks healthy, found by the periodic
  self-probe, readiness following: the same test, part 2;
- Redis SIGKILLed and restarted mid-traffic: test_redis_killed_and_restarted_mid_traffic.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any, cast

import aiohttp
import pytest
import redis.asyncio as aioredis

from gochat.brokers import redis as redis_broker
from gochat.brokers.base import CHAT_PREFIX
from gochat.events import Event
from gochat.keys import BROKER, HUB, TAP

from .cluster import nodes, readyz, until_ready
from .console import BEARER, TOKEN
from .redis_server import RedisServer
from .util import TIMEOUT, Chat, connect, join, recv, recv_type, until

pytestmark = pytest.mark.redis

ROOM_CHANNEL = "gochat:room:{r}"


def broker_events(*apps: Chat) -> dict[str, list[str]]:
    """BROKER_UP / BROKER_DOWN per node, recorded from each node's tap from now on."""
    seen: dict[str, list[str]] = {}
    for app in apps:
        node = app.app[BROKER].node_id
        seen[node] = []

        def record(event: Event, into: list[str] = seen[node]) -> None:
            if event.kind.startswith("BROKER"):
                into.append(event.kind)

        app.app[TAP].attach(record)
    return seen


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def one_subscriber_per_node(url: str, *names: str, room_channel: str = ROOM_CHANNEL) -> None:
    """Exactly one subscriber connection per node, on the room and on each control channel.

    Redis may list a dropped connection for a moment after the node closed it, so this waits
    (up to TIMEOUT) for the counts to settle on the right values.
    """
    r = aioredis.Redis.from_url(url)
    try:
        want_numsub = {room_channel: len(names), **{f"gochat:control:{n}": 1 for n in names}}
        want_clients = {f"gochat:{n}:sub": 1 for n in names}
        got: tuple[Any, Any] = ({}, {})
        async with asyncio.timeout(TIMEOUT):
            while True:
                numsub = dict(await r.pubsub_numsub(*want_numsub))
                clients = Counter(c["name"] for c in await r.client_list(_type="pubsub"))
                got = ({_text(k): v for k, v in numsub.items()}, dict(clients))
                if got == (want_numsub, want_clients):
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"subscribers: {got}, want {want_numsub}, {want_clients}") from None
    finally:
        await r.aclose()


async def members_in_r(apps: list[Chat]) -> list[aiohttp.ClientWebSocketResponse]:
    """One member per node in room r, presence frames consumed."""
    socks = []
    for i, app in enumerate(apps):
        ws, _ = await connect(app, f"u{i}")
        await join(ws, "r")
        socks.append(ws)
    for i, ws in enumerate(socks[:-1]):
        for _ in range(len(socks) - 1 - i):
            await recv_type(ws, "presence")
    return socks


@pytest.mark.slow
async def test_redis_hanging_debug_sleep(
    debug_redis: RedisServer, make_chat: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The probe's PUBLISH fails after COMMAND_TIMEOUT (2 s); it goes out every PROBE_EVERY,
    # so by default a hang is noticed 2-3 s in, and a 3 s hang may end just before. Probing
    # every 0.25 s makes a 3 s hang always noticed (within 2.25 s), so readiness must show it.
    monkeypatch.setattr(redis_broker.subscriber, "PROBE_EVERY", 0.25)
    n1, n2 = await nodes(make_chat, debug_redis, "n1", "n2")
    states = broker_events(n1, n2)
    a, b = await members_in_r([n1, n2])

    outcome: dict[str, set[str]] = {}  # cid -> {"delivered", "unavailable"}
    at_b: list[str] = []
    statuses: list[int] = []

    async def read_a() -> None:
        while True:
            frame = await recv(a, timeout=20)  # every frame parses as JSON
            if frame["type"] == "chat":
                outcome.setdefault(frame["cid"], set()).add("delivered")
            elif frame["type"] == "error":
                assert frame["code"] == "unavailable", frame
                outcome.setdefault(frame["ref"], set()).add("unavailable")

    async def read_b() -> None:
        while True:
            frame = await recv(b, timeout=20)
            if frame["type"] == "chat":
                at_b.append(frame["cid"])

    readers = [asyncio.create_task(read_a()), asyncio.create_task(read_b())]
    sleeper = aioredis.Redis.from_url(debug_redis.url, socket_timeout=10)
    sent: list[str] = []
    try:
        hang = asyncio.create_task(cast(Any, sleeper).execute_command("DEBUG", "SLEEP", 3))
        started = time.monotonic()
        k = 0
        while not hang.done():  # chats all through the hang, one every 100 ms
            cid = f"m{k}"
            sent.append(cid)
            await a.send_json({"type": "chat", "room": "r", "text": cid, "cid": cid})
            statuses.append((await readyz(n1))[0])
            k += 1
            await asyncio.sleep(0.1)
        await hang
        woke = time.monotonic()
        await until_ready(n1, True)
        await until_ready(n2, True)
        back = time.monotonic() - woke
    finally:
        await sleeper.aclose()
    hung = woke - started
    await one_subscriber_per_node(debug_redis.url, "n1", "n2")
    # a's frames are handled in order, so once "after" is back every chat before it has
    # had whatever answer it will get
    await a.send_json({"type": "chat", "room": "r", "text": "after", "cid": "after"})
    await until(lambda: "after" in outcome and "after" in at_b, what="'after' on both nodes")
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)

    refused = [c for c in sent if "unavailable" in outcome.get(c, ())]
    delivered = [c for c in sent if "delivered" in outcome.get(c, ())]
    r = aioredis.Redis.from_url(debug_redis.url)
    try:  # Redis runs what was queued when it wakes: some refused chats are kept anyway
        entries: list[tuple[bytes, dict[bytes, bytes]]] = cast(
            Any, await r.xrange("gochat:history:{r}")
        )
        kept = {json.loads(b"{" + f[b"s"][2:])["cid"] for _, f in entries}
    finally:
        await r.aclose()
    assert set(delivered) <= kept
    # Never lost: each chat is delivered, refused, or at least kept. KNOWN GAP: a chat whose
    # script ran after Redis woke, while this node was resubscribing, is kept and acknowledged
    # by Redis but its sender gets neither its echo nor an error (no stream replay on
    # resubscribe yet; docs/scaling.md, Limits). Seen in about 1 run in 5.
    unanswered = [c for c in sent if c not in outcome]
    assert set(unanswered) <= kept, (unanswered, kept)
    assert refused, outcome  # commands time out after 2 s: some chats are refused, not queued
    assert 503 in statuses, statuses  # the probe timed out: not ready while hung
    for seen in states.values():
        assert seen[-2:] == ["BROKER_DOWN", "BROKER_UP"], states
    print(
        f"hang {hung:.2f}s: {len(sent)} chats, {len(delivered)} delivered, {len(refused)} "
        f"answered unavailable ({len(set(delivered) & set(refused))} both, "
        f"{len(kept & set(refused))} of them kept in history; {len(unanswered)} unanswered "
        f"but kept); ready again "
        f"{back * 1000:.0f} ms after Redis woke"
    )


async def test_lagging_subscriber_dropped_by_redis(
    redis_server: RedisServer, make_chat: Any
) -> None:
    n1, n2 = await nodes(make_chat, redis_server, "n1", "n2")
    states = broker_events(n1, n2)
    a, b = await members_in_r([n1, n2])
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        # a subscriber more than 32 KiB behind is cut at once; one message over that is enough
        await r.config_set("client-output-buffer-limit", "pubsub 32768 0 0")
        dropped_at = time.monotonic()
        await r.publish(ROOM_CHANNEL, b"c1-0\n" + CHAT_PREFIX + b"1-0" + b"x" * 100_000 + b"}")
        for node, seen in states.items():
            await until(
                lambda s=seen: s[-2:] == ["BROKER_DOWN", "BROKER_UP"], what=f"{node} down, up"
            )
        back = time.monotonic() - dropped_at
        assert (await readyz(n1))[0] == 200 and (await readyz(n2))[0] == 200
    finally:
        await r.aclose()
    await one_subscriber_per_node(redis_server.url, "n1", "n2")
    await a.send_json({"type": "chat", "room": "r", "text": "after", "cid": "after"})
    for ws in (a, b):
        frame = await recv(ws)  # the next frame: the oversized message never reached anyone
        assert frame["type"] == "chat" and frame["cid"] == "after", frame
    print(f"subscribers dropped for lagging: both nodes ready again in {back * 1000:.0f} ms")


GARBAGE = [
    b"no newline at all",
    b"",
    b"\x00\xff\xfe\n\x80\x81",  # binary
    b"c1-0\n" + b"A" * 1_000_000,  # huge
    b"c1-0\n{not json}",
    b'c1-0\n{"type":"chat","id":"1-0","text":"cut off',  # truncated
    CHAT_PREFIX.join([b"c1-0\n", b'1-0","text":"\xff\xfe"}']),  # not UTF-8
    b"pnobody\nnot json",
    b'x1\n{"type":"chat"}',  # unknown kind
    b"\n",
]


async def test_garbage_on_a_room_channel(redis_server: RedisServer, make_chat: Any) -> None:
    n1, n2 = await nodes(make_chat, redis_server, "n1", "n2", admin_token=TOKEN)
    a, b = await members_in_r([n1, n2])
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        for payload in GARBAGE:
            assert await r.publish(ROOM_CHANNEL, payload) == 2
        # well-formed but about a user nobody knows: passes (it is a valid presence frame)
        ghost = (
            b'{"type":"presence","userId":"nobody","name":"nobody","room":"r","status":"online"}'
        )
        await r.publish(ROOM_CHANNEL, b"pnobody\n" + ghost)
    finally:
        await r.aclose()
    await a.send_json({"type": "chat", "room": "r", "text": "still here", "cid": "ok"})
    for ws in (a, b):
        assert await recv(ws) == json.loads(ghost)  # recv: each frame is JSON text
        frame = await recv(ws)
        assert frame["type"] == "chat" and frame["cid"] == "ok", frame
    for app in (n1, n2):
        assert app.app[HUB].stats.bad_envelopes == len(GARBAGE)
        metrics = await (await app.get("/metrics", headers=BEARER)).text()
        assert f"gochat_bad_envelopes_total {float(len(GARBAGE))}" in metrics
        assert (await readyz(app))[0] == 200
    await one_subscriber_per_node(redis_server.url, "n1", "n2")


async def test_messages_published_while_deaf_are_replayed_once_in_order(
    redis_server: RedisServer, make_chat: Any
) -> None:
    """Node a's subscriber is killed again and again while node b publishes: a's member
    still gets every message exactly once and in order, without reconnecting (the node
    replays the room's stream after the last id it delivered)."""
    a, b = await nodes(make_chat, redis_server, "a", "b", history=1000)
    reader, sender = await members_in_r([a, b])
    r = aioredis.Redis.from_url(redis_server.url)
    count = 300
    try:

        async def kill_a_subscriber() -> None:
            for _ in range(6):
                for c in await r.client_list(_type="pubsub"):
                    if c["name"] == "gochat:a:sub":
                        await r.client_kill_filter(_id=c["id"])
                await until(lambda: a.app[BROKER].ready, what="node a to resubscribe")
                await asyncio.sleep(0.05)  # spread the kills over the publishing

        killer = asyncio.create_task(kill_a_subscriber())
        sent = 0
        for i in range(count):
            await sender.send_json({"type": "chat", "room": "r", "text": f"m{i}"})
            frame = await recv_type(sender, "chat")  # one at a time: b never refuses
            if frame["text"] == f"m{i}":
                sent += 1
        await killer
        texts = [(await recv_type(reader, "chat"))["text"] for _ in range(count)]
    finally:
        await r.aclose()
    assert sent == count
    assert texts == [f"m{i}" for i in range(count)]
    await nothing_more_chat(reader)
    assert a.app[BROKER].replayed > 0  # the kills did make node a miss live messages
    assert not reader.closed


async def nothing_more_chat(ws: aiohttp.ClientWebSocketResponse) -> None:
    """No further chat frame (a duplicate) arrives within a short wait."""
    try:
        while True:
            frame = await recv(ws, timeout=0.3)
            assert frame["type"] != "chat", f"unexpected chat {frame}"
    except TimeoutError:
        return


async def test_a_gap_beyond_history_closes_members_to_rejoin(
    redis_server: RedisServer, make_chat: Any
) -> None:
    """When node a was deaf for more messages than the room keeps, its member is closed with
    1013 (never left with a silent hole) and, rejoining with `since`, is told
    `recovered: false`."""
    a, b = await nodes(make_chat, redis_server, "a", "b", history=5)
    reader, sender = await members_in_r([a, b])
    await sender.send_json({"type": "chat", "room": "r", "text": "before"})
    last_seen = (await recv_type(reader, "chat"))["id"]
    await recv_type(sender, "chat")
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        for c in await r.client_list(_type="pubsub"):
            if c["name"] == "gochat:a:sub":
                await r.client_kill_filter(_id=c["id"])
    finally:
        await r.aclose()
    # Node a resubscribes after >= 50 ms of backoff. A burst lands meanwhile, far more than
    # the room keeps (MAXLEN ~ trims in whole stream nodes of 100 entries).
    for i in range(400):
        await sender.send_json({"type": "chat", "room": "r", "text": f"m{i}"})
    for _ in range(400):
        await recv_type(sender, "chat")
    async with asyncio.timeout(TIMEOUT):
        msg = await reader.receive()
        while msg.type is aiohttp.WSMsgType.TEXT:
            msg = await reader.receive()
    # the close frame itself (the client's own close_code may read 1006: the server closed
    # the transport before the client's close reply could be written)
    assert (msg.type, msg.data, msg.extra) == (
        aiohttp.WSMsgType.CLOSE,
        1013,
        "messages missed: rejoin with since",
    )
    assert a.app[BROKER].gaps == 1 and a.app[HUB].stats.resync_closes == 1
    again, _ = await connect(a, "u0")
    rejoined = await join(again, "r", since=last_seen)
    assert rejoined["recovered"] is False
    assert [m["text"] for m in rejoined["history"]][-1] == "m399"


async def test_redis_out_of_memory_answers_unavailable(
    redis_server: RedisServer, make_chat: Any
) -> None:
    """Redis refusing writes (maxmemory reached, noeviction) is an `unavailable` answer, the
    node stays up, and chat works again once Redis accepts writes."""
    (a,) = await nodes(make_chat, redis_server, "a")
    ws, _ = await connect(a, "u")
    await join(ws, "r")
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        await r.config_set("maxmemory-policy", "noeviction")
        await r.config_set("maxmemory", 1)
        await ws.send_json({"type": "chat", "room": "r", "text": "full", "cid": "oom"})
        err = await recv_type(ws, "error")
        assert (err["code"], err["ref"]) == ("unavailable", "oom")
        await r.config_set("maxmemory", 0)
    finally:
        await r.aclose()
    await ws.send_json({"type": "chat", "room": "r", "text": "room again"})
    assert (await recv_type(ws, "chat"))["text"] == "room again"
    assert (await readyz(a))[0] == 200
