"""The operations console in Redis mode: several nodes on one real Redis, one console.

Issue 4: every node's events reach every console (one events channel), a kick travels to the
node holding the connection, the nodes table is cluster-wide, a logout holds on every node.
Each test starts its own redis-server; nodes are in-process apps sharing its URL.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from typing import Any

import aiohttp
import pytest

from gochat.console.keys import CONSOLE
from gochat.keys import BROKER, HUB, TAP

from .cluster import HasUrl, nodes
from .console import BEARER, TOKEN, events_until, has_kind, open_stream
from .redis_server import RedisServer
from .util import TIMEOUT, Chat, connect, join, recv, recv_type, uid_of, until

pytestmark = pytest.mark.redis

Stream = aiohttp.ClientWebSocketResponse


async def cluster(make_chat: Any, server: HasUrl, *names: str, **extra: Any) -> list[Chat]:
    """One app per name on `server`, all with the same admin token, each ready."""
    return await nodes(make_chat, server, *names, admin_token=TOKEN, **extra)


async def watch(console_node: Chat, *others: Chat) -> Stream:
    """Open a console stream on `console_node` and wait until every node publishes to it."""
    ws = await open_stream(console_node)
    for app in (console_node, *others):
        await until(lambda a=app: a.app[TAP].active, what=f"{app.app[BROKER].node_id} sharing")
    return ws


async def barrier(ws: Stream, node: Chat, name: str) -> list[dict[str, Any]]:
    """Every event `node` emitted before this call, as seen by the stream `ws`.

    A node publishes its events in order on one connection and Redis delivers them in order,
    so once the CONNECT of a fresh connection on `node` arrives, everything before it has.
    """
    marker, _ = await connect(node, name)
    try:
        return await events_until(ws, has_kind("CONNECT", user=uid_of(name)))
    finally:
        await marker.close()


async def test_stream_on_one_node_sees_another_nodes_events_once(
    any_redis: HasUrl, make_chat: Any
) -> None:
    n1, n2 = await cluster(make_chat, any_redis, "n1", "n2")
    ws = await watch(n1, n2)
    bob, welcome = await connect(n2, "bob")
    assert welcome["node"] == "n2"
    await join(bob, "lobby")
    await bob.send_json({"type": "chat", "room": "lobby", "text": "from n2", "cid": "c1"})
    chat = await recv_type(bob, "chat")
    await bob.close()
    events = await barrier(ws, n2, "marker")
    mine = [e for e in events if e["user"] == uid_of("bob")]
    counts = Counter(e["kind"] for e in mine)
    for kind in ("CONNECT", "JOIN", "PUBLISH", "LEAVE", "DISCONNECT"):
        assert counts[kind] == 1, (kind, counts)
    assert {e["node"] for e in mine} == {"n2"}
    kinds = [e["kind"] for e in mine]
    assert kinds.index("CONNECT") < kinds.index("JOIN") < kinds.index("PUBLISH")
    assert kinds.index("PUBLISH") < kinds.index("DISCONNECT")
    publish = next(e for e in mine if e["kind"] == "PUBLISH")
    assert publish["room"] == "lobby" and publish["line"].split(" ")[1] == "[n2"
    assert publish["args"][0] == "gochat:room:{lobby}"
    assert json.loads(publish["args"][1]) == chat  # exactly what the clients received
    conn = next(e for e in mine if e["kind"] == "CONNECT")["conn"]
    assert conn.startswith("n2/")
    assert next(e for e in mine if e["kind"] == "DISCONNECT")["args"] == [conn, "1000"]
    await ws.close()


async def test_filters_apply_to_another_nodes_events(any_redis: HasUrl, make_chat: Any) -> None:
    n1, n2 = await cluster(make_chat, any_redis, "n1", "n2")
    ws = await watch(n1, n2)
    viewer = next(iter(n1.app[CONSOLE].viewers))
    await ws.send_json({"type": "filter", "node": "n2", "kinds": ["PUBLISH"]})
    await until(lambda: viewer.filter.node == "n2", what="the node filter")
    a, _ = await connect(n1, "ann")
    b, _ = await connect(n2, "ben")
    for c in (a, b):
        await join(c, "x")
        await join(c, "y")
    await a.send_json({"type": "chat", "room": "x", "text": "ann on n1"})
    await b.send_json({"type": "chat", "room": "x", "text": "ben on n2"})
    events = await events_until(ws, has_kind("PUBLISH", user=uid_of("ben")))
    assert [(e["kind"], e["node"], e["user"]) for e in events] == [("PUBLISH", "n2", uid_of("ben"))]

    await ws.send_json({"type": "filter", "room": "y", "user": uid_of("ben"), "kinds": ["PUBLISH"]})
    await until(lambda: viewer.filter.room == "y", what="the room filter")
    await b.send_json({"type": "chat", "room": "x", "text": "ben in x"})
    await a.send_json({"type": "chat", "room": "y", "text": "ann in y"})
    await b.send_json({"type": "chat", "room": "y", "text": "ben in y"})
    events = await events_until(ws, has_kind("PUBLISH", room="y"))
    assert [(e["room"], e["user"]) for e in events] == [("y", uid_of("ben"))]

    await ws.send_json({"type": "filter", "text": "needle", "node": "n2"})
    await until(lambda: viewer.filter.text == "needle", what="the text filter")
    await a.send_json({"type": "chat", "room": "x", "text": "needle from n1"})
    await b.send_json({"type": "chat", "room": "x", "text": "hay"})
    await b.send_json({"type": "chat", "room": "x", "text": "needle from n2"})
    events = await events_until(ws, has_kind("PUBLISH", node="n2"))
    assert len(events) == 1 and "needle from n2" in events[0]["line"]
    for c in (a, b, ws):
        await c.close()


async def test_kick_on_one_node_closes_a_connection_on_another(
    any_redis: HasUrl, make_chat: Any
) -> None:
    n1, n2 = await cluster(make_chat, any_redis, "n1", "n2")
    ws = await watch(n1, n2)
    mallory, _ = await connect(n2, "mallory")
    (client,) = n2.app[HUB].clients.values()
    resp = await n1.post(
        "/admin/api/kick", json={"conn": client.id, "reason": "spam, again"}, headers=BEARER
    )
    assert resp.status == 202 and (await resp.json())["status"] == "sent"
    msg = await mallory.receive(timeout=TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 4001 and msg.extra == "spam, again"
    events = await barrier(ws, n2, "marker")
    kicks = [e for e in events if e["kind"] == "KICK"]
    assert len(kicks) == 1, kicks  # audited once, by the node that closed the connection
    assert kicks[0]["args"] == [client.id, uid_of("mallory"), "spam, again"]
    assert kicks[0]["node"] == "n2" and kicks[0]["addr"].startswith("127.0.0.1:")
    gone = [e for e in events if e["kind"] == "DISCONNECT" and e["conn"] == client.id]
    assert len(gone) == 1 and gone[0]["args"][-1] == "4001"
    # a connection id on a node that does not exist, or is gone, is not found
    for conn in (client.id.replace("n2/", "n9/"), "n1/999"):
        missing = await n1.post("/admin/api/kick", json={"conn": conn}, headers=BEARER)
        assert missing.status == 404, conn
    await ws.close()


async def test_notice_from_one_node_reaches_members_on_another_and_history(
    any_redis: HasUrl, make_chat: Any
) -> None:
    n1, n2 = await cluster(make_chat, any_redis, "n1", "n2")
    ws = await watch(n1, n2)
    bob, _ = await connect(n2, "bob")
    await join(bob, "lobby")
    resp = await n1.post(
        "/admin/api/notice", json={"room": "lobby", "text": "restart at 10"}, headers=BEARER
    )
    assert resp.status == 200
    msg_id = (await resp.json())["id"]
    got = await recv_type(bob, "chat")
    assert got["id"] == msg_id and got["system"] is True and got["text"] == "restart at 10"
    carol, _ = await connect(n2, "carol")
    joined = await join(carol, "lobby")
    assert [(m["id"], m["text"]) for m in joined["history"]] == [(msg_id, "restart at 10")]
    events = await events_until(ws, has_kind("NOTICE"))
    notice = [e for e in events if e["kind"] == "NOTICE"]
    assert len(notice) == 1 and notice[0]["node"] == "n1"
    assert notice[0]["args"] == ["gochat:room:{lobby}", "restart at 10", msg_id]
    for c in (bob, carol, ws):
        await c.close()


async def test_nodes_table_is_cluster_wide_and_drops_a_stopped_node(
    any_redis: HasUrl, make_chat: Any
) -> None:
    # a short TTL refreshes every node's published stats every 0.2 s
    n1, n2, n3 = await cluster(make_chat, any_redis, "n1", "n2", "n3", presence_ttl=1.2)
    socks = []
    for app, count in ((n2, 2), (n3, 1)):
        for i in range(count):
            ws, _ = await connect(app, f"u{i}")
            await join(ws, f"room{i}")
            socks.append(ws)

    async def table() -> dict[str, dict[str, Any]]:
        snap = await (await n1.get("/admin/api/snapshot", headers=BEARER)).json()
        return {n["id"]: n for n in snap["nodes"]}

    want = {"n1": (0, 0), "n2": (2, 2), "n3": (1, 1)}
    seen: dict[str, dict[str, Any]] = {}

    async def fresh() -> bool:
        seen.update(await table())
        return {k: (v.get("connections"), v.get("rooms")) for k, v in seen.items()} == want

    await until_async(fresh, what=f"the nodes table to show {want}")
    for node in seen.values():
        assert node["broker"] == "redis" and node["ready"] is True, node
        assert node["rss"] > 1_000_000 and node["uptime"] >= 0, node
    page = await (await n1.get("/admin/", headers=BEARER)).text()
    assert all(re.search(rf">\s*{n}\s*<", page) for n in want), "nodes missing from the page"

    await n3.close()  # stops cleanly: leaves the registry at once
    assert sorted(await table()) == ["n1", "n2"]
    for ws in socks:
        await ws.close()


async def until_async(check: Any, timeout: float = TIMEOUT, what: str = "condition") -> None:
    """`until` for an async check (polled every 50 ms); fail after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_logout_on_one_node_revokes_the_session_on_every_node(
    any_redis: HasUrl, make_chat: Any
) -> None:
    n1, n2 = await cluster(make_chat, any_redis, "n1", "n2")
    resp = await n1.post("/admin/login", data={"token": TOKEN}, allow_redirects=False)
    assert resp.status == 303
    cookie = {"Cookie": f"gochat_admin={resp.cookies['gochat_admin'].value}"}
    page = await n1.get("/admin/")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', await page.text())
    assert csrf
    # the same cookie works on the other node (one token, one signing key)
    assert (await n2.get("/admin/api/snapshot", headers=cookie)).status == 200
    out = await n1.post("/admin/logout", data={"csrf": csrf.group(1)}, allow_redirects=False)
    assert out.status == 303
    assert (await n1.get("/admin/api/snapshot", headers=cookie)).status == 401

    async def refused_on_n2() -> bool:
        return (await n2.get("/admin/api/snapshot", headers=cookie)).status == 401

    await until_async(refused_on_n2, what="the REVOKE to reach n2")


async def test_console_sees_its_own_node_while_redis_is_down(
    redis_server: RedisServer, make_chat: Any
) -> None:
    (n1,) = await cluster(make_chat, redis_server, "n1")
    ws = await watch(n1)
    redis_server.kill()
    events = await events_until(ws, has_kind("BROKER_DOWN", node="n1"))
    down = [e for e in events if e["kind"] == "BROKER_DOWN"]
    assert len(down) == 1 and down[0]["args"][0].startswith("redis unreachable"), down
    a, _ = await connect(n1, "ann")  # the node's own events still reach its console
    await a.send_json({"type": "join", "room": "r"})
    assert (await recv(a))["code"] == "unavailable"
    events = await events_until(ws, has_kind("ERROR", user=uid_of("ann")))
    assert [e["kind"] for e in events] == ["CONNECT", "ERROR"]
    # a kick for another node cannot travel now: said so, not "no such connection"
    resp = await n1.post("/admin/api/kick", json={"conn": "n2/1"}, headers=BEARER)
    assert resp.status == 503 and (await resp.json())["error"] == "unavailable"
    redis_server.start()
    events = await events_until(ws, has_kind("BROKER_UP", node="n1"), timeout=10)
    assert [e["kind"] for e in events].count("BROKER_UP") == 1
    await a.close()
    events = await events_until(ws, has_kind("DISCONNECT", user=uid_of("ann")))
    assert [e["kind"] for e in events] == ["DISCONNECT"]  # once: not again through Redis
    await ws.close()


async def test_presence_is_one_line_per_transition_cluster_wide(
    any_redis: HasUrl, make_chat: Any
) -> None:
    n1, n2, n3 = await cluster(make_chat, any_redis, "n1", "n2", "n3")
    ws = await watch(n1, n2, n3)
    a, _ = await connect(n1, "ann")
    b, _ = await connect(n2, "ben")
    await join(a, "lobby")
    await join(b, "lobby")  # two nodes now deliver the room's presence
    assert (await recv(a))["userId"] == uid_of("ben")
    c, _ = await connect(n3, "cat")
    await join(c, "lobby")
    for ws_ in (a, b):
        assert (await recv_type(ws_, "presence"))["userId"] == uid_of("cat")
    await c.close()
    for ws_ in (a, b):
        off = await recv_type(ws_, "presence")
        assert off["userId"] == uid_of("cat") and off["status"] == "offline"
    events = await barrier(ws, n3, "marker")
    presence = [e for e in events if e["kind"] == "PRESENCE" and e["user"] == uid_of("cat")]
    assert [json.loads(e["args"][1])["status"] for e in presence] == ["online", "offline"]
    assert {e["node"] for e in presence} == {"n3"}  # the node whose script made the change
    for ws_ in (a, b, ws):
        await ws_.close()


async def test_a_reaped_nodes_offline_is_one_line_from_the_reaper(
    any_redis: HasUrl, make_chat: Any
) -> None:
    # n3 has nobody in the room, so it may reap without receiving the room at all
    n1, n2, n3 = await cluster(make_chat, any_redis, "n1", "n2", "n3", presence_ttl=1.2)
    ws = await watch(n1, n2, n3)
    a, _ = await connect(n1, "ann")
    b, _ = await connect(n2, "ben")
    await join(a, "lobby")
    await join(b, "lobby")
    await recv_type(a, "presence")
    # a node that crashed: its member is registered, its heartbeat is gone
    broker = n1.app[BROKER]
    keys = broker.presence._room_keys("lobby", "ghost")
    command = broker.commands.publish_command  # SPUBLISH on a cluster
    args = [command, broker.channel("lobby"), "lobby", "ghost/1", "dan", "dan", "ghost-1"]
    await broker._scripts["add"](keys=keys, args=args)
    assert broker._redis is not None
    await broker._redis.hset("gochat:{nodes}", "ghost", "ghost-1")
    for ws_ in (a, b):
        assert (await recv_type(ws_, "presence"))["status"] == "online"
    for ws_ in (a, b):
        off = await recv_type(ws_, "presence")
        assert off["userId"] == "dan" and off["status"] == "offline"
    events: list[dict[str, Any]] = []
    for app, name in ((n1, "m1"), (n2, "m2"), (n3, "m3")):  # whoever reaped has published
        events += await barrier(ws, app, name)
    offline = [
        e
        for e in events
        if e["kind"] == "PRESENCE" and e["user"] == "dan" and '"offline"' in e["args"][1]
    ]
    assert len(offline) == 1, offline
    for ws_ in (a, b, ws):
        await ws_.close()
