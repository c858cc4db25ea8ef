"""Several nodes on one real Redis: routing, order, presence, history, crashes and outages.

Every test starts its own redis-server (tests/redis_server.py); in-process nodes are apps
made by `make_chat` with the same REDIS_URL and different node ids.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

import aiohttp
import pytest
import redis.asyncio as aioredis

from gochat.brokers import redis as redis_broker
from gochat.brokers.base import BrokerUnavailable, chat_suffix
from gochat.events import Event
from gochat.keys import BROKER, TAP

from .cluster import HasUrl, nodes, readyz, until_ready
from .procs import Node
from .redis_server import RedisServer
from .util import anon, connect, join, nothing_more, recv, recv_type, uid_of, until, vanish

pytestmark = pytest.mark.redis


async def chats_until(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    """The next `count` chat frames (other frames skipped)."""
    return [await recv_type(ws, "chat") for _ in range(count)]


async def test_cross_node_chat_presence_members(any_redis: HasUrl, make_chat: Any) -> None:
    n1, n2, n3 = await nodes(make_chat, any_redis, "n1", "n2", "n3")
    alice, wa = await connect(n1, "alice")
    assert wa["node"] == "n1"
    await join(alice, "lobby")
    bob, _ = await connect(n2, "bob")
    jb = await join(bob, "lobby")
    assert sorted(m["userId"] for m in jb["members"]) == [uid_of("alice"), uid_of("bob")]
    online = await recv(alice)
    assert online == {
        "type": "presence",
        "userId": uid_of("bob"),
        "name": "bob",
        "room": "lobby",
        "status": "online",
    }
    # carol on two nodes at once: one member, one online, one offline (after both leave)
    carol1, _ = await connect(n3, "carol")
    carol2, _ = await connect(n1, "carol")
    await join(carol1, "lobby")
    for ws in (alice, bob):
        assert (await recv(ws))["userId"] == uid_of("carol")
    jc = await join(carol2, "lobby")
    assert sorted(m["userId"] for m in jc["members"]) == [
        uid_of(n) for n in ("alice", "bob", "carol")
    ]
    await nothing_more(alice)
    await nothing_more(bob)

    await alice.send_json({"type": "chat", "room": "lobby", "text": "hi all", "cid": "x1"})
    got = [await recv_type(ws, "chat") for ws in (alice, bob, carol1, carol2)]
    assert all(g == got[0] for g in got) and got[0]["cid"] == "x1" and got[0]["text"] == "hi all"
    for ws in (alice, bob, carol1, carol2):
        await nothing_more(ws)  # exactly once on every node

    await carol1.close()
    await nothing_more(alice)  # carol is still here through n1
    await carol2.close()
    for ws in (alice, bob):
        off = await recv(ws)
        assert off["userId"] == uid_of("carol") and off["status"] == "offline"
    await nothing_more(alice)
    await nothing_more(bob)


async def test_routing_subscribes_only_with_local_members(
    redis_server: RedisServer, make_chat: Any
) -> None:
    n1, n2 = await nodes(make_chat, redis_server, "n1", "n2", key_prefix="t9:")
    r = aioredis.Redis.from_url(redis_server.url)
    try:

        async def subscribers(room: str) -> int:
            counts = await r.pubsub_numsub(f"t9:room:{{{room}}}")
            return int(counts[0][1])

        a, _ = await connect(n1, "a")
        await join(a, "r1")
        assert await subscribers("r1") == 1
        b, _ = await connect(n2, "b")
        await join(b, "r1")
        assert await subscribers("r1") == 2
        await b.send_json({"type": "leave", "room": "r1"})
        await recv_type(b, "left")
        await _eventually(lambda: subscribers("r1"), 1)
        await a.close()
        await _eventually(lambda: subscribers("r1"), 0)
        keys: list[bytes] = cast(Any, await r.keys("*"))
        assert keys and all(k.startswith(b"t9:") for k in keys), keys
        channels: list[bytes] = cast(Any, await r.pubsub_channels())
        assert all(c.startswith(b"t9:") for c in channels), channels
    finally:
        await r.aclose()


async def _eventually(get: Any, want: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while (got := await get()) != want:
            await asyncio.sleep(0.02)
    assert got == want


async def test_one_order_across_nodes_under_concurrent_senders(
    any_redis: HasUrl, make_chat: Any
) -> None:
    apps = await nodes(make_chat, any_redis, "n1", "n2", "n3")
    socks = []
    for i, app in enumerate(apps):
        ws, _ = await connect(app, f"u{i}")
        await join(ws, "race")
        socks.append(ws)
    per_sender = 60

    async def send_all(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        for k in range(per_sender):
            await ws.send_json(
                {"type": "chat", "room": "race", "text": f"{i}:{k}", "cid": f"{i}-{k}"}
            )

    total = per_sender * len(socks)
    receivers = [asyncio.create_task(chats_until(ws, total)) for ws in socks]
    await asyncio.gather(*(send_all(i, ws) for i, ws in enumerate(socks)))
    seen = await asyncio.gather(*receivers)
    orders = [[m["id"] for m in frames] for frames in seen]
    assert orders[0] == orders[1] == orders[2]
    assert len(set(orders[0])) == total  # exactly once, one id per message
    as_pairs = [tuple(int(x) for x in i.split("-")) for i in orders[0]]
    assert as_pairs == sorted(as_pairs)  # ids increase in delivery order
    for i in range(len(socks)):  # each sender's own messages keep their order
        mine = [m["cid"] for m in seen[0] if m["userId"] == uid_of(f"u{i}")]
        assert mine == [f"{i}-{k}" for k in range(per_sender)]


async def test_history_and_since_across_nodes(any_redis: HasUrl, make_chat: Any) -> None:
    n1, n2 = await nodes(make_chat, any_redis, "n1", "n2", history=3)
    a, _ = await connect(n1, "a")
    await join(a, "r")
    ids = []
    for i in range(5):
        await a.send_json({"type": "chat", "room": "r", "text": f"m{i}"})
        ids.append((await recv_type(a, "chat"))["id"])
    b, _ = await connect(n2, "b")
    jb = await join(b, "r")
    assert [m["text"] for m in jb["history"]] == ["m2", "m3", "m4"]
    assert [m["id"] for m in jb["history"]] == ids[2:] and "recovered" not in jb
    for since, texts, recovered in (
        (ids[3], ["m4"], True),
        (ids[4], [], True),
        (ids[1], ["m2", "m3", "m4"], True),  # exactly 3 missing: all kept
        (ids[0], ["m2", "m3", "m4"], False),  # 4 missing, 3 kept
        ("0-1", ["m2", "m3", "m4"], False),  # from another Redis, or trimmed
        ("not-an-id", ["m2", "m3", "m4"], False),
    ):
        c, _ = await connect(n2, "c")
        jc = await join(c, "r", since=since)
        assert [m["text"] for m in jc["history"]] == texts, since
        assert jc["recovered"] is recovered, since
        await c.close()


@pytest.mark.slow
async def test_killed_node_goes_offline_within_ttl(
    redis_server: RedisServer, make_chat: Any
) -> None:
    ttl = 2.0  # by design the ghost goes 1/2..5/6 of the ttl after the kill
    (n1,) = await nodes(make_chat, redis_server, "n1", presence_ttl=ttl)
    env = {
        "REDIS_URL": redis_server.url,
        "GOCHAT_NODE_ID": "n2",
        "GOCHAT_PRESENCE_TTL": str(ttl),
        "GOCHAT_LOG_LEVEL": "WARNING",
    }
    n2 = await Node.start(env, ready_path="/readyz")  # its own process, to be SIGKILLed
    try:
        alice, _ = await connect(n1, "alice")
        await join(alice, "lobby")
        async with aiohttp.ClientSession() as session:
            bob = await session.ws_connect(f"{n2.url}/ws?name=bob&uid=user-bob")
            assert (await recv(bob))["type"] == "welcome"
            await join(bob, "lobby")
            assert (await recv(alice))["status"] == "online"
            assert len(await n1.app[BROKER].nodes()) == 2

            killed_at = time.monotonic()
            await n2.kill()  # SIGKILL: no goodbye, its presence stays in Redis until reaped
            off = await recv(alice, timeout=ttl + 3)
            ghost = time.monotonic() - killed_at
            await bob.close()
    finally:
        await n2.kill()
    assert off["status"] == "offline" and off["userId"] == uid_of("bob")
    print(f"ghost presence cleared {ghost:.2f}s after SIGKILL (ttl {ttl}s)")
    assert ghost <= ttl
    assert await n1.app[BROKER].members("lobby") == [{"userId": uid_of("alice"), "name": "alice"}]
    assert [n["id"] for n in await n1.app[BROKER].nodes()] == ["n1"]
    await nothing_more(alice)  # offline once


async def test_redis_killed_and_restarted_mid_traffic(
    redis_server: RedisServer, make_chat: Any
) -> None:
    n1, n2 = await nodes(make_chat, redis_server, "n1", "n2")
    a, _ = await connect(n1, "a")
    b, _ = await connect(n2, "b")
    await join(a, "r")
    await join(b, "r")
    await recv_type(a, "presence")

    outcome: dict[str, str] = {}  # cid -> "delivered" | "unavailable"
    at_b: list[str] = []

    async def read_a() -> None:
        while True:
            frame = await recv(a, timeout=15)
            if frame["type"] == "chat":
                outcome.setdefault(frame["cid"], "delivered")
            elif frame["type"] == "error":
                assert frame["code"] == "unavailable", frame
                outcome.setdefault(frame["ref"], "unavailable")

    async def read_b() -> None:
        while True:
            frame = await recv(b, timeout=15)
            if frame["type"] == "chat":
                at_b.append(frame["cid"])

    sent: list[str] = []
    stop = asyncio.Event()

    async def send_a() -> None:
        k = 0
        while not stop.is_set():
            cid = f"m{k}"
            sent.append(cid)
            await a.send_json({"type": "chat", "room": "r", "text": cid, "cid": cid})
            k += 1
            await asyncio.sleep(0.005)

    readers = [asyncio.create_task(read_a()), asyncio.create_task(read_b())]
    sender = asyncio.create_task(send_a())
    await until(lambda: len(outcome) >= 20, what="traffic before the kill")
    redis_server.kill()
    killed_at = time.monotonic()
    await until_ready(n1, False)
    down = time.monotonic() - killed_at
    await until_ready(n2, False)
    status, body = await readyz(n1)
    assert status == 503 and body["reason"].startswith("redis unreachable"), body
    await until(lambda: "unavailable" in outcome.values(), what="an unavailable answer")

    redis_server.start()
    restarted_at = time.monotonic()
    await until_ready(n1, True)
    await until_ready(n2, True)
    up = time.monotonic() - restarted_at
    count = len(sent)
    await until(lambda: len(sent) >= count + 20, what="traffic after the restart")
    stop.set()
    await sender
    await until(lambda: len(outcome) == len(sent), timeout=10, what="an answer to every chat")
    # cross-node delivery resumes
    await a.send_json({"type": "chat", "room": "r", "text": "after", "cid": "after"})
    await until(lambda: "after" in at_b, what="b to get a's message after the restart")
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)

    assert set(outcome) == set(sent) | {"after"}  # nothing dropped silently
    delivered = [c for c in sent if outcome[c] == "delivered"]
    refused = [c for c in sent if outcome[c] == "unavailable"]
    assert refused and delivered
    assert set(at_b) <= set(delivered) | {"after"}
    print(
        f"readiness 503 {down * 1000:.0f} ms after the kill; 200 {up * 1000:.0f} ms after "
        f"the restart; {len(delivered)} delivered, {len(refused)} answered unavailable"
    )


async def test_redis_absent_at_startup(redis_server: RedisServer, make_chat: Any) -> None:
    redis_server.kill()
    n1 = await make_chat(redis_url=redis_server.url, node_id="n1")
    status, body = await readyz(n1)
    assert status == 503 and "redis" in body["reason"], body
    a, _ = await connect(n1, "a")
    await a.send_json({"type": "join", "room": "r"})
    err = await recv(a)
    assert err["type"] == "error" and err["code"] == "unavailable" and err["ref"] == "join"
    redis_server.start()
    await until_ready(n1, True)
    ja = await join(a, "r")
    assert ja["members"] == [{"userId": uid_of("a"), "name": "a"}]
    await a.send_json({"type": "chat", "room": "r", "text": "hello"})
    assert (await recv_type(a, "chat"))["text"] == "hello"


async def test_readiness_follows_the_subscriber_connection(
    redis_server: RedisServer, make_chat: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_broker.subscriber, "PROBE_EVERY", 0.1)
    monkeypatch.setattr(redis_broker.subscriber, "PROBE_TIMEOUT", 0.5)
    n1, n2 = await nodes(make_chat, redis_server, "n1", "n2")
    kinds: dict[str, list[str]] = {"n1": [], "n2": []}
    reasons: list[str] = []

    def record(event: Event) -> None:
        if event.kind.startswith("BROKER"):
            kinds[event.node].append(event.kind)
            reasons.append(event.args[0])

    n1.app[TAP].attach(record)
    n2.app[TAP].attach(record)
    a, _ = await connect(n1, "a")
    b, _ = await connect(n2, "b")
    await join(a, "r")
    await join(b, "r")

    # 1. Redis closes the subscriber connections only: commands still work, but the nodes
    # would hear nothing, so they must report not ready, reconnect and resubscribe.
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await r.client_kill_filter(_type="pubsub") == 2
    finally:
        await r.aclose()
    for seen in kinds.values():
        await until(lambda s=seen: s[-2:] == ["BROKER_DOWN", "BROKER_UP"], what="down, up")
    await b.send_json({"type": "chat", "room": "r", "text": "one", "cid": "one"})
    assert (await recv_type(a, "chat"))["cid"] == "one"

    # 2. A subscription that is open but silent (here: probes go to a channel it does not
    # hear) is found dead by the probe within PROBE_TIMEOUT.
    broker = n1.app[BROKER]
    kinds["n1"].clear()
    reasons.clear()
    monkeypatch.setattr(broker.subscriber, "_control", broker.subscriber._control + b"-elsewhere")
    await until(lambda: "BROKER_DOWN" in kinds["n1"], timeout=3, what="the probe to fail")
    assert "probe" in reasons[0], reasons
    await until(lambda: kinds["n1"][-1:] == ["BROKER_UP"], what="ready again")
    await b.send_json({"type": "chat", "room": "r", "text": "two", "cid": "two"})
    assert (await recv_type(a, "chat"))["cid"] == "two"


class Cluster:
    """A cluster listener that keeps the events (what the console is to the broker)."""

    def __init__(self, got: list[bytes]) -> None:
        self.got = got

    def cluster_event(self, data: bytes) -> None:
        self.got.append(data)

    def node_info(self) -> dict[str, Any]:
        return {"test": True}


async def test_console_events_and_nodes_cluster_wide(any_redis: HasUrl, make_chat: Any) -> None:
    n1, n2 = await nodes(make_chat, any_redis, "n1", "n2")
    got: dict[str, list[bytes]] = {"n1": [], "n2": []}
    for name, app in (("n1", n1), ("n2", n2)):
        app.app[BROKER].attach_cluster(Cluster(got[name]))
    n1.app[BROKER].publish_event(b'{"kind":"NOTICE"}')
    await until(lambda: got["n1"] and got["n2"], what="the event on both nodes")
    assert got == {"n1": [b'{"kind":"NOTICE"}'], "n2": [b'{"kind":"NOTICE"}']}
    listed = await n2.app[BROKER].nodes()
    assert sorted(n["id"] for n in listed) == ["n1", "n2"]
    assert all(n["broker"] == "redis" and n["ready"] is True for n in listed)


async def test_clean_stop_sends_offline_at_once(any_redis: HasUrl, make_chat: Any) -> None:
    n1, n2 = await nodes(make_chat, any_redis, "n1", "n2")
    alice, _ = await connect(n1, "alice")
    await join(alice, "lobby")
    bob, _ = await connect(n2, "bob")
    await join(bob, "lobby")
    assert (await recv(alice))["status"] == "online"
    started = time.monotonic()
    await n2.close()  # SIGTERM path: clients get 1001, the node leaves the cluster
    off = await recv(alice, timeout=3)
    assert off["status"] == "offline" and off["userId"] == uid_of("bob")
    assert time.monotonic() - started < 3
    assert [n["id"] for n in await n1.app[BROKER].nodes()] == ["n1"]
    await nothing_more(alice)


async def test_join_storm_queues_for_redis_connections(
    redis_server: RedisServer, make_chat: Any
) -> None:
    """300 joins, then 300 abrupt disconnects, at once on one node: every join is answered,
    every user goes offline once, and the node stays ready."""
    (node,) = await nodes(make_chat, redis_server, "storm")
    url = str(node.make_url("/ws"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        socks = [await session.ws_connect(url, params=anon(f"s{i}")) for i in range(300)]
        for ws in socks:
            assert (await recv(ws))["type"] == "welcome"
        await asyncio.gather(*(ws.send_json({"type": "join", "room": "storm"}) for ws in socks))
        replies = [await recv_type(ws, "joined") for ws in socks]
        assert all(r["room"] == "storm" for r in replies)
        assert (await readyz(node))[0] == 200
        watcher, _ = await connect(node, "watcher")
        await join(watcher, "storm")
        for ws in socks:  # and all leave at once: 300 presence removals in flight
            vanish(ws)
        offline = {(await recv_type(watcher, "presence"))["userId"] for _ in range(300)}
        assert offline == {uid_of(f"s{i}") for i in range(300)}
        assert (await readyz(node))[0] == 200
        assert await node.app[BROKER].members("storm") == [
            {"userId": uid_of("watcher"), "name": "watcher"}
        ]
        for ws in socks:
            await ws.close()


async def test_publishes_of_one_tick_share_one_round_trip(
    redis_server: RedisServer, make_chat: Any
) -> None:
    """Group commit: chat messages submitted on a node in one tick go to Redis in one
    pipeline. Every publisher gets its own id, the ids follow the order of the calls, each
    message reaches a member on another node once, and it survives Redis losing its
    scripts (NOSCRIPT: the script is loaded and the batch sent again)."""
    a, b = await nodes(make_chat, redis_server, "a", "b")
    watcher, _ = await connect(b, "w")
    await join(watcher, "r")
    await join(watcher, "s")
    broker = a.app[BROKER]
    assert isinstance(broker, redis_broker.RedisBroker)
    fields = {"room": "r", "userId": "u", "name": "u", "ts": 1}

    async def burst(tag: str, n: int) -> list[str]:
        calls = [
            broker.publish(room, chat_suffix(fields | {"room": room, "text": f"{tag}{i}"}))
            for i in range(n)
            for room in ("r", "s")
        ]
        before = broker.publish_round_trips
        ids = await asyncio.gather(*calls)
        assert broker.publish_round_trips == before + 1
        return ids

    ids = await burst("x", 50)
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        await r.script_flush()  # as after a Redis restart: NOSCRIPT, load, send again
    finally:
        await r.aclose()
    ids += await burst("y", 50)
    for first in (0, 1):  # calls alternate between r and s; each room has its own stream
        as_pairs = [tuple(int(x) for x in i.split("-")) for i in ids[first::2]]
        assert len(set(as_pairs)) == 100 and as_pairs == sorted(as_pairs)
    got = [await recv_type(watcher, "chat") for _ in range(200)]
    for room in ("r", "s"):
        texts = [m["text"] for m in got if m["room"] == room]
        assert texts == [f"x{i}" for i in range(50)] + [f"y{i}" for i in range(50)]
    await nothing_more(watcher)


async def test_a_refused_batch_answers_every_publisher(
    redis_server: RedisServer, make_chat: Any
) -> None:
    """Redis refusing the writes of a batch (out of memory) answers each of its publishers
    with BrokerUnavailable; the next batch goes through."""
    (a,) = await nodes(make_chat, redis_server, "a")
    broker = a.app[BROKER]
    suffix = chat_suffix({"room": "r", "userId": "u", "name": "u", "text": "t", "ts": 1})
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        await r.config_set("maxmemory-policy", "noeviction")
        await r.config_set("maxmemory", 1)
        outcomes = await asyncio.gather(
            *(broker.publish("r", suffix) for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(o, BrokerUnavailable) for o in outcomes), outcomes
        await r.config_set("maxmemory", 0)
    finally:
        await r.aclose()
    assert len(set(await asyncio.gather(*(broker.publish("r", suffix) for _ in range(20))))) == 20


async def test_a_fast_sender_is_published_in_order_in_few_round_trips(
    redis_server: RedisServer, make_chat: Any
) -> None:
    """A client's reader does not wait for each publish: what the client sends while a round
    trip is on its way goes in the next batch. Its messages still reach another node's
    member once each and in the order sent, and take fewer round trips than messages."""
    a, b = await nodes(make_chat, redis_server, "a", "b")
    sender, _ = await connect(a, "fast")
    watcher, _ = await connect(b, "w")
    await join(watcher, "r")
    await join(sender, "r")
    await recv_type(watcher, "presence")
    broker = a.app[BROKER]
    before = broker.publish_round_trips
    count = 300
    for i in range(count):
        await sender.send_str(json.dumps({"type": "chat", "room": "r", "text": "m", "cid": str(i)}))
    got = [(await recv_type(watcher, "chat"))["cid"] for _ in range(count)]
    assert got == [str(i) for i in range(count)]
    assert [(await recv_type(sender, "chat"))["cid"] for _ in range(count)] == got
    assert broker.publish_round_trips - before < count
    await nothing_more(watcher)


async def test_member_counts_are_users_in_one_round_trip(
    redis_server: RedisServer, make_chat: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console's room table: each room's number of users (one user connected twice, on
    two nodes, counts once), for a whole page of rooms in one round trip to Redis."""
    n1, n2 = await nodes(make_chat, redis_server, "n1", "n2")
    ann1, _ = await connect(n1, "ann")
    ann2, _ = await connect(n2, "ann")
    ben, _ = await connect(n2, "ben")
    for ws in (ann1, ann2, ben):
        await join(ws, "lobby")
    await join(ben, "side")
    broker = n1.app[BROKER]
    me = asyncio.current_task()
    trips: list[str] = []  # what this task sent to Redis: a command, or a pipeline of them
    command: Any = aioredis.Redis.execute_command  # untyped in redis-py
    execute = aioredis.client.Pipeline.execute

    async def one_command(self: Any, *args: Any, **options: Any) -> Any:
        if asyncio.current_task() is me:
            trips.append(str(args[0]))
        return await command(self, *args, **options)

    async def one_pipeline(self: Any, raise_on_error: bool = True) -> Any:
        if asyncio.current_task() is me:
            trips.append(f"pipeline of {len(self.command_stack)}")
        return await execute(self, raise_on_error)

    with monkeypatch.context() as m:
        m.setattr(aioredis.Redis, "execute_command", one_command)
        m.setattr(aioredis.client.Pipeline, "execute", one_pipeline)
        counts = await broker.member_counts(["lobby", "side", "empty"])
    assert counts == {"lobby": 2, "side": 1, "empty": 0}
    assert len(trips) == 1, trips
    assert counts["lobby"] == len(await broker.members("lobby"))
    assert await broker.member_counts([]) == {}
