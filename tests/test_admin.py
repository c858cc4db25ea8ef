"""The operations console over real sockets: auth, snapshot, event stream, actions, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gochat.app import create_app
from gochat.brokers.base import BrokerUnavailable
from gochat.brokers.memory import MemoryBroker
from gochat.console.auth import COOKIE_NAME, ConsoleAuth, LoginThrottle
from gochat.console.keys import CONSOLE
from gochat.console.load import FIELDS, LoadMeter, LoadRing, cluster_sample
from gochat.console.metrics import LATENCY_BUCKETS, LatencyHistogram, message_ts_ms
from gochat.console.state import WATCH_TTL
from gochat.events import EventFilter, Feed
from gochat.keys import HUB, TAP

from .conftest import MakeChat
from .console import BEARER, TOKEN, events_until, has_kind, open_stream
from .util import TIMEOUT, connect, expect_close, join, make_settings, recv_type, until
from .util import Chat as Client

LINE = re.compile(
    r'^\d{10}\.\d{6} \[(?P<node>\S+) (?P<addr>\S+)\] "(?P<kind>[A-Z_]+)"(?P<rest>.*)$'
)


@pytest.fixture
async def admin(make_chat: MakeChat) -> Client:
    return await make_chat(admin_token=TOKEN)


async def login(client: Client) -> str:
    """Log the TestClient in through the form; return the session's CSRF token."""
    resp = await client.post("/admin/login", data={"token": TOKEN}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    page = await client.get("/admin/")
    assert page.status == 200
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', await page.text())
    assert match
    return match.group(1)


# --- auth ---------------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/admin/api/snapshot"),
    ("GET", "/admin/events"),
    ("GET", "/metrics"),
    ("GET", "/admin/static/console.js"),
    ("GET", "/admin/no-such-page"),
    ("POST", "/admin/api/kick"),
    ("POST", "/admin/api/notice"),
    ("POST", "/admin/logout"),
]


async def test_every_path_refuses_without_credentials(admin: Client) -> None:
    forged = ConsoleAuth("some-other-token").issue(time.time())[0]
    for cookies in ({}, {COOKIE_NAME: forged}, {COOKIE_NAME: "v1.x.9999999999.sig"}):
        admin.session.cookie_jar.clear()
        admin.session.cookie_jar.update_cookies(cookies)
        for path in ("/admin", "/admin/"):
            resp = await admin.get(path, allow_redirects=False)
            assert resp.status == 302 and resp.headers["Location"] == "/admin/login"
        for method, path in PROTECTED:
            resp = await admin.request(method, path, allow_redirects=False)
            assert resp.status == 401, (method, path, resp.status)
            body = await resp.text()
            assert body == "unauthorized"  # nothing about the node, its users or its rooms
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # a wrong bearer token: the same 401 (three tries stay under the throttle)
    for _, path in PROTECTED[:3]:
        resp = await admin.get(path, headers={"Authorization": "Bearer nope"})
        assert resp.status == 401 and await resp.text() == "unauthorized"
    # the login page and its two assets are public, and carry nothing secret
    assert (await admin.get("/admin/login")).status == 200
    assert (await admin.get("/admin/static/console.css")).status == 200
    assert (await admin.get("/admin/static/login.js")).status == 200


async def test_login_sets_a_strict_cookie_and_logout_revokes_it(admin: Client) -> None:
    page = await admin.get("/admin/login?token=prefilled")
    assert page.status == 200 and 'value="prefilled"' in await page.text()
    wrong = await admin.post("/admin/login", data={"token": "wrong"}, allow_redirects=False)
    assert wrong.status == 401 and "not right" in await wrong.text()
    assert COOKIE_NAME not in wrong.cookies

    resp = await admin.post("/admin/login", data={"token": TOKEN}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/"
    raw = resp.headers["Set-Cookie"]
    assert "HttpOnly" in raw and "SameSite=Strict" in raw and "Path=/admin" in raw
    assert "Max-Age=43200" in raw
    assert TOKEN not in raw  # the cookie is signed with a key derived from the token
    cookie = resp.cookies[COOKIE_NAME].value

    console = await admin.get("/admin/")
    assert console.status == 200 and console.headers["Cache-Control"] == "no-store"
    assert "default-src 'self'" in console.headers["Content-Security-Policy"]
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', await console.text())
    assert csrf
    assert (await admin.get("/admin/login", allow_redirects=False)).status == 302

    refused = await admin.post("/admin/logout", allow_redirects=False)
    assert refused.status == 403  # no CSRF token
    out = await admin.post("/admin/logout", data={"csrf": csrf.group(1)}, allow_redirects=False)
    assert out.status == 303 and out.headers["Location"] == "/admin/login"
    assert (await admin.get("/admin/", allow_redirects=False)).status == 302
    # the old cookie, replayed, is refused too
    replay = await admin.get("/admin/api/snapshot", headers={"Cookie": f"{COOKIE_NAME}={cookie}"})
    assert replay.status == 401


def test_session_cookie_expires_and_resists_tampering() -> None:
    auth = ConsoleAuth("t", ttl=60)
    value, session = auth.issue(1000.0)
    assert auth.verify(value, 1059.0) == session
    assert auth.verify(value, 1061.0) is None
    v, sid, exp, sig = value.split(".")
    assert auth.verify(f"{v}.{sid}.{int(exp) + 999}.{sig}", 1000.0) is None
    assert auth.verify(f"{v}.other.{exp}.{sig}", 1000.0) is None
    assert ConsoleAuth("t2").verify(value, 1000.0) is None
    # every node with the same token accepts it (the key derives from the token)
    assert ConsoleAuth("t", ttl=60).verify(value, 1000.0) == session
    assert auth.check_csrf(session, auth.csrf_token(session))
    assert not auth.check_csrf(session, "x") and not auth.check_csrf(session, None)


async def test_actions_need_csrf_and_same_origin(admin: Client) -> None:
    csrf = await login(admin)
    body = {"room": "lobby", "text": "hello"}
    assert (await admin.post("/admin/api/notice", json=body)).status == 403
    bad = await admin.post("/admin/api/notice", json=body, headers={"X-CSRF-Token": "nope"})
    assert bad.status == 403
    ok = await admin.post("/admin/api/notice", json=body, headers={"X-CSRF-Token": csrf})
    assert ok.status == 200 and (await ok.json())["status"] == "sent"
    cross = await admin.post(
        "/admin/api/notice",
        json=body,
        headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
    )
    assert cross.status == 403
    # a plain form post carries the token as a field and lands back on the console
    form = await admin.post("/admin/api/notice", data={**body, "csrf": csrf}, allow_redirects=False)
    assert form.status == 303 and form.headers["Location"] == "/admin/"
    # bearer calls are not cookie-driven, so they need no CSRF token
    admin.session.cookie_jar.clear()
    assert (await admin.post("/admin/api/notice", json=body, headers=BEARER)).status == 200


async def test_cross_origin_stream_is_refused(admin: Client) -> None:
    await login(admin)
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await admin.ws_connect("/admin/events", headers={"Origin": "http://evil.example"})
    assert exc.value.status == 403
    ws = await open_stream(admin, Origin=str(admin.make_url("")).rstrip("/"))
    await ws.close()


async def test_failed_logins_are_throttled(admin: Client) -> None:
    for _ in range(4):
        resp = await admin.post("/admin/login", data={"token": "guess"})
        assert resp.status == 401
    assert (await admin.get("/metrics", headers={"Authorization": "Bearer guess"})).status == 401
    limited = await admin.post("/admin/login", data={"token": TOKEN})
    assert limited.status == 429 and int(limited.headers["Retry-After"]) > 0
    assert "Too many" in await limited.text()
    assert (await admin.get("/admin/api/snapshot", headers=BEARER)).status == 429


def test_throttle_window() -> None:
    throttle = LoginThrottle(limit=2, window=10)
    throttle.fail("a", 0)
    assert throttle.retry_after("a", 1) == 0
    throttle.fail("a", 1)
    assert throttle.retry_after("a", 2) == pytest.approx(8)
    assert throttle.retry_after("b", 2) == 0
    assert throttle.retry_after("a", 10.5) == 0  # the first failure aged out


async def test_generated_token_is_logged_once_with_a_login_url(
    make_chat: MakeChat, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gochat.console.views")
    client = await make_chat()  # no admin_token
    token = client.app[CONSOLE].auth.token
    assert len(token) >= 32
    urls = [r.getMessage() for r in caplog.records if "/admin/login?token=" in r.getMessage()]
    assert len(urls) == 1 and urls[0].endswith(f"/admin/login?token={token}")
    resp = await client.get("/admin/api/snapshot", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200


# --- snapshot -----------------------------------------------------------------------------


async def test_snapshot_lists_nodes_connections_and_rooms(admin: Client) -> None:
    a, wa = await connect(admin, "alice")
    b, _ = await connect(admin, "bob")
    await join(a, "lobby")
    await join(b, "lobby")
    await join(b, "side")
    await a.send_json({"type": "chat", "room": "lobby", "text": "hi"})
    await recv_type(b, "chat")

    snap = await (await admin.get("/admin/api/snapshot", headers=BEARER)).json()
    assert snap["node"] == "test-node"
    (node,) = snap["nodes"]
    assert node["id"] == "test-node" and node["connections"] == 2 and node["rooms"] == 2
    assert node["broker"] == "memory" and node["ready"] is True
    assert node["rss"] > 1_000_000 and node["uptime"] >= 0
    conns = snap["connections"]
    assert conns["total"] == 2 and conns["matched"] == 2
    alice = next(c for c in conns["items"] if c["name"] == "alice")
    assert alice["node"] == "test-node" and alice["rooms"] == ["lobby"]
    assert alice["id"].startswith("test-node/") and alice["remote"].startswith("127.0.0.1:")
    assert alice["in"] == 2 and alice["out"] >= 3 and 0 <= alice["fill"] <= 1
    assert alice["since"] <= time.time()
    rooms = {r["name"]: r for r in snap["rooms"]["items"]}
    assert rooms["lobby"]["members"] == 2 and rooms["lobby"]["local"] == 2
    assert rooms["side"]["members"] == 1 and rooms["lobby"]["rate"] >= 0

    # server-side filtering and paging
    only = await (await admin.get("/admin/api/snapshot?q=ALI", headers=BEARER)).json()
    assert [c["name"] for c in only["connections"]["items"]] == ["alice"]
    assert only["connections"]["matched"] == 1 and only["connections"]["total"] == 2
    page = await (await admin.get("/admin/api/snapshot?limit=1&page=1", headers=BEARER)).json()
    assert [c["name"] for c in page["connections"]["items"]] == ["bob"]
    rq = await (await admin.get("/admin/api/snapshot?room_q=sid", headers=BEARER)).json()
    assert [r["name"] for r in rq["rooms"]["items"]] == ["side"]
    bad = await admin.get("/admin/api/snapshot?page=x", headers=BEARER)
    assert bad.status == 400
    await a.close()
    await b.close()


async def test_room_members_count_users_in_one_call_per_page(
    admin: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rooms table counts users, not connections (one user connected twice counts
    once), with one member_counts call per page; when the broker cannot answer, every
    room's count is unknown."""
    console = admin.app[CONSOLE]
    a1, _ = await connect(admin, "alice")
    a2, _ = await connect(admin, "alice")
    b, _ = await connect(admin, "bob")
    for ws in (a1, a2, b):
        await join(ws, "lobby")
    await join(b, "side")
    broker = console.broker
    counts = await broker.member_counts(["lobby", "side", "nowhere"])
    assert counts == {"lobby": 2, "side": 1, "nowhere": 0}
    calls: list[list[str]] = []
    real = broker.member_counts

    async def counting(rooms: list[str]) -> dict[str, int]:
        calls.append(list(rooms))
        counted: dict[str, int] = await real(rooms)
        return counted

    async def refusing(rooms: list[str]) -> dict[str, int]:
        raise BrokerUnavailable("down")

    monkeypatch.setattr(broker, "member_counts", counting)
    page = await console.tables.rooms("", 0, 50)
    assert calls == [["lobby", "side"]]
    rows = {r["name"]: (r["members"], r["local"]) for r in page["items"]}
    assert rows == {"lobby": (2, 3), "side": (1, 1)}
    monkeypatch.setattr(broker, "member_counts", refusing)
    page = await console.tables.rooms("", 0, 50)
    assert [(r["name"], r["members"]) for r in page["items"]] == [("lobby", None), ("side", None)]
    for ws in (a1, a2, b):
        await ws.close()


async def test_room_rate_counts_messages_per_second(admin: Client) -> None:
    console = admin.app[CONSOLE]
    a, _ = await connect(admin, "a")
    await join(a, "busy")
    console._samples.clear()  # drop the background ticker's real-time samples
    console.tick(1000.0)
    for i in range(10):
        await a.send_json({"type": "chat", "room": "busy", "text": f"m{i}"})
        await recv_type(a, "chat")
    console.tick(1005.0)
    assert console.room_rate("busy") == pytest.approx(2.0)
    await a.close()


async def test_html_in_names_and_text_renders_as_text(admin: Client) -> None:
    evil = "<script>alert(1)</script>"
    a, _ = await connect(admin, evil)
    await join(a, "lobby")
    page = await (await admin.get("/admin/", headers=BEARER)).text()
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # the only scripts on the page are our own file
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/admin/static/console.js" defer>']
    await a.close()


async def snap(client: Client, query: str = "") -> dict[str, Any]:
    resp = await client.get(f"/admin/api/snapshot?{query}", headers=BEARER)
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def test_tables_sort_and_page_on_the_server(
    admin: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sort` / `room_sort` (`key` or `-key`) order the whole table before it is paged;
    sorting rooms by members asks the broker for every matched room's count at once."""
    sockets = []
    # busy: 3 users; mid: 2 users (one of them twice); quiet: 1 user
    for name, rooms in [
        ("ann", ["busy", "mid"]),
        ("bob", ["busy", "mid"]),
        ("bob", ["mid", "quiet"]),
        ("cy", ["busy"]),
    ]:
        ws, _ = await connect(admin, name)
        for room in rooms:
            await join(ws, room)
        sockets.append(ws)
    for i in range(3):  # ann says the most
        await sockets[0].send_json({"type": "chat", "room": "busy", "text": f"m{i}"})
        await recv_type(sockets[0], "chat")

    default = await snap(admin)
    assert [r["name"] for r in default["rooms"]["items"]] == ["busy", "mid", "quiet"]
    assert default["rooms"]["sort"] == "" and default["connections"]["sort"] == ""
    # by name, the other way round
    rev = await snap(admin, "room_sort=-name")
    assert [r["name"] for r in rev["rooms"]["items"]] == ["quiet", "mid", "busy"]

    # busiest first, across pages: page 0 of 1 row holds the busiest of them all
    calls: list[list[str]] = []
    broker = admin.app[CONSOLE].broker
    real = broker.member_counts

    async def counting(rooms: list[str]) -> dict[str, int]:
        calls.append(list(rooms))
        counted: dict[str, int] = await real(rooms)
        return counted

    monkeypatch.setattr(broker, "member_counts", counting)
    first = await snap(admin, "room_sort=-members&room_limit=1")
    assert [(r["name"], r["members"]) for r in first["rooms"]["items"]] == [("busy", 3)]
    assert first["rooms"]["sort"] == "-members" and first["rooms"]["matched"] == 3
    assert calls == [["busy", "mid", "quiet"]]  # one call, every matched room
    second = await snap(admin, "room_sort=-members&room_limit=1&room_page=1")
    assert [r["name"] for r in second["rooms"]["items"]] == ["mid"]
    low = await snap(admin, "room_sort=members")
    assert [r["name"] for r in low["rooms"]["items"]] == ["quiet", "mid", "busy"]
    here = await snap(admin, "room_sort=-local")  # mid: 3 connections here, busy: 3, quiet 1
    assert [r["name"] for r in here["rooms"]["items"]][-1] == "quiet"
    calls.clear()
    await snap(admin, "room_sort=-local&room_limit=2")
    assert calls == [["busy", "mid"]]  # any other sort: one call for the page only
    filtered = await snap(admin, "room_sort=-members&room_q=u")  # busy, quiet
    assert [r["name"] for r in filtered["rooms"]["items"]] == ["busy", "quiet"]

    # connections: by name, by frames in (descending), stable on ties
    by_name = await snap(admin, "sort=name")
    assert [c["name"] for c in by_name["connections"]["items"]] == ["ann", "bob", "bob", "cy"]
    busiest = await snap(admin, "sort=-in&limit=1")
    assert [c["name"] for c in busiest["connections"]["items"]] == ["ann"]
    newest = await snap(admin, "sort=-id")
    ids = [c["id"] for c in newest["connections"]["items"]]
    assert ids == sorted(ids, key=lambda i: int(i.rpartition("/")[2]), reverse=True)

    # a page past the end (rows went since the link was made) is the last page
    last = await snap(admin, "limit=3&page=7")
    assert last["connections"]["page"] == 1 and len(last["connections"]["items"]) == 1
    # unknown keys: 400, with the allowed ones named
    for query in ("sort=password", "room_sort=-rss", "sort=--name"):
        bad = await admin.get(f"/admin/api/snapshot?{query}", headers=BEARER)
        assert bad.status == 400 and "one of" in await bad.text(), query
    # the page renders the sort: header state and links that flip it
    page = await (await admin.get("/admin/?q=b&room_sort=-members", headers=BEARER)).text()
    assert re.search(r'aria-sort="descending" data-sort="members"', page)
    assert 'href="?q=b&amp;room_sort=members"' in page  # flips, keeps the filter
    assert 'href="?q=b&amp;room_sort=-members&amp;sort=-in"' in page  # numbers: highest first
    for ws in sockets:
        await ws.close()


async def test_notice_reports_the_members_it_reached(admin: Client) -> None:
    """The notice answers the room's member count, cluster-wide (users, not connections);
    /admin/api/rooms/{room} gives it beforehand, so the page can ask about an empty room."""
    empty = await admin.get("/admin/api/rooms/nobody-here", headers=BEARER)
    assert empty.status == 200
    assert await empty.json() == {"room": "nobody-here", "members": 0, "local": 0}
    sent = await admin.post(
        "/admin/api/notice", json={"room": "nobody-here", "text": "anyone?"}, headers=BEARER
    )
    assert sent.status == 200
    body = await sent.json()
    assert body["status"] == "sent" and body["members"] == 0 and body["id"]

    a1, _ = await connect(admin, "ann")
    a2, _ = await connect(admin, "ann")  # the same user twice: one member
    b, _ = await connect(admin, "bob")
    for ws in (a1, a2, b):
        await join(ws, "pair")
    info = await (await admin.get("/admin/api/rooms/pair", headers=BEARER)).json()
    assert info == {"room": "pair", "members": 2, "local": 3}
    sent = await admin.post(
        "/admin/api/notice", json={"room": "pair", "text": "hello both"}, headers=BEARER
    )
    assert (await sent.json())["members"] == 2
    for ws in (a1, a2, b):
        assert (await recv_type(ws, "chat"))["text"] == "hello both"
    bad = await admin.get("/admin/api/rooms/no%20spaces", headers=BEARER)
    assert bad.status == 400 and (await bad.json())["error"] == "bad_room"
    assert (await admin.get("/admin/api/rooms/pair")).status == 401
    for ws in (a1, a2, b):
        await ws.close()


def test_load_meter_and_ring() -> None:
    meter = LoadMeter()
    meter.read(100.0, published=10, frames_out=50)
    assert (meter.messages, meter.deliveries) == (0.0, 0.0)  # the first reading
    meter.read(102.0, published=20, frames_out=250)
    assert (meter.messages, meter.deliveries) == (5.0, 100.0)
    meter.read(101.0, published=30, frames_out=300)  # the clock went back
    assert (meter.messages, meter.deliveries) == (0.0, 0.0)

    # the cluster's sample: every node's figures summed; a node without them counts 0
    nodes = [
        {"id": "a", "connections": 1200, "msg_rate": 3.5, "delivery_rate": 700.25},
        {"id": "b", "connections": 800, "msg_rate": 1.5, "delivery_rate": 299.75},
        {"id": "old", "connections": "?", "ready": False},
    ]
    assert cluster_sample(10.0, nodes) == (10.0, 2000, 5.0, 1000.0, 3)

    ring = LoadRing(every=2.0, window=900.0)
    for i in range(500):
        ring.add((float(i * 2), i, 0.0, 0.0, 1))
    assert len(ring) == 450  # 15 minutes of 2 s samples
    data = ring.to_json()
    assert data["fields"] == list(FIELDS) == ["t", "connections", "messages", "deliveries", "nodes"]
    assert data["samples"][0][0] == 100.0 and data["samples"][-1] == [998.0, 499, 0.0, 0.0, 1]
    ring.add((5.0, 1, 0.0, 0.0, 1))  # the clock went back: start again
    assert len(ring) == 1 and ring.latest() == (5.0, 1, 0.0, 0.0, 1)


async def test_samples_follow_traffic_into_snapshot_and_stream(admin: Client) -> None:
    """The console samples its load (the ticker does it every 2 s; here by hand): the
    snapshot carries the ring (not with samples=0), a stream opened with samples=1 gets
    each new sample, and messages and deliveries per second follow the traffic."""
    console = admin.app[CONSOLE]
    ws = await admin.ws_connect("/admin/events?samples=1", headers=BEARER)
    assert json.loads((await ws.receive(timeout=TIMEOUT)).data)["type"] == "hello"
    a, _ = await connect(admin, "alice")
    b, _ = await connect(admin, "bob")
    await join(a, "lobby")
    await join(b, "lobby")
    t0 = time.time() + 1000  # after the background ticker's own samples
    await console.sample(t0)
    for i in range(10):
        await a.send_json({"type": "chat", "room": "lobby", "text": f"m{i}"})
        await recv_type(a, "chat")
        await recv_type(b, "chat")
    sample = await console.sample(t0 + 2)
    t, connections, messages, deliveries, nodes = sample
    assert (t, connections, nodes) == (round(t0 + 2, 3), 2, 1)
    assert messages == 5.0  # 10 chat messages in 2 s
    assert deliveries >= 10.0  # 20 frames to two members, and the presence frames
    assert console.node_info()["msg_rate"] == 5.0  # what the heartbeat tells other nodes

    got: list[list[float]] = []
    async with asyncio.timeout(TIMEOUT):
        while not any(s[0] == t for s in got):
            data = json.loads((await ws.receive()).data)
            if data["type"] == "samples":
                got.extend(data["samples"])
    assert got[-1] == list(sample)

    load = (await snap(admin))["load"]
    assert load["every"] == 2.0 and load["window"] == 900.0 and load["fields"] == list(FIELDS)
    assert load["samples"][-1] == list(sample)
    assert "load" not in await snap(admin, "samples=0")

    # a stream that did not ask for samples gets none
    plain = await open_stream(admin)
    await console.sample(t0 + 4)
    await a.send_json({"type": "chat", "room": "lobby", "text": "marker"})
    seen = await events_until(plain, has_kind("PUBLISH"))
    assert all("kind" in e for e in seen)
    for sock in (a, b, ws, plain):
        await sock.close()


async def test_samples_over_server_sent_events(admin: Client) -> None:
    console = admin.app[CONSOLE]
    stream = await admin.get(
        "/admin/events?samples=1", headers={**BEARER, "Accept": "text/event-stream"}
    )
    assert stream.status == 200
    async with asyncio.timeout(TIMEOUT):
        assert (await stream.content.readuntil(b"\n\n")).startswith(b"event: hello\n")
        await until(lambda: len(console.viewers) == 1, what="the SSE viewer")
        sample = await console.sample(time.time() + 1000)
        while True:
            block = (await stream.content.readuntil(b"\n\n")).decode()
            if block.startswith("event: sample\n"):
                break
    assert json.loads(block.split("data: ", 1)[1]) == list(sample)
    stream.close()


async def test_cluster_samples_sum_every_node(aiohttp_client: Any) -> None:
    """With another node in the nodes table, a sample is the sum of both."""

    class TwoNodes(MemoryBroker):
        async def nodes(self) -> list[dict[str, Any]]:
            other = {"id": "node-b", "connections": 40, "msg_rate": 2.5, "delivery_rate": 90.0}
            return [*await super().nodes(), other]

    client: Client = await aiohttp_client(
        create_app(make_settings(admin_token=TOKEN), broker=TwoNodes("test-node", 100))
    )
    a, _ = await connect(client, "alice")
    console = client.app[CONSOLE]
    _, connections, messages, deliveries, nodes = await console.sample(time.time() + 1000)
    assert (connections, nodes) == (41, 2)
    assert messages >= 2.5 and deliveries >= 90.0
    await a.close()


async def test_connection_detail(admin: Client) -> None:
    ws = await admin.ws_connect(
        "/ws", params={"name": "dora"}, headers={"User-Agent": "Mozilla/5.0 (test) Dora/1.0"}
    )
    assert json.loads((await ws.receive(timeout=TIMEOUT)).data)["type"] == "welcome"
    await join(ws, "lobby")
    await join(ws, "side")
    (client,) = admin.app[HUB].clients.values()
    resp = await admin.get(f"/admin/api/connections/{client.id}", headers=BEARER)
    assert resp.status == 200, await resp.text()
    detail = await resp.json()
    assert detail["id"] == client.id and detail["name"] == "dora"
    assert detail["rooms"] == ["lobby", "side"] and detail["members"] == {"lobby": 1, "side": 1}
    assert detail["remote"].startswith("127.0.0.1:")
    assert detail["agent"] == "Mozilla/5.0 (test) Dora/1.0"
    assert 0 <= detail["fill"] <= 1 and detail["buffered"] >= 0
    assert detail["limit"] == admin.app[CONSOLE].settings.send_buffer_bytes
    assert detail["since"] <= time.time()
    page = await admin.get(f"/admin/connections/{client.id}", headers=BEARER)
    assert page.status == 200 and page.headers["Cache-Control"] == "no-store"
    html = await page.text()
    for text in ("Mozilla/5.0 (test) Dora/1.0", detail["remote"], "lobby", "side", "<meter"):
        assert text in html, text
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/admin/static/console.js" defer>']
    # the console's table links to it
    console_page = await (await admin.get("/admin/", headers=BEARER)).text()
    assert f'href="/admin/connections/{client.id}"' in console_page

    missing = await admin.get("/admin/api/connections/other-node/1", headers=BEARER)
    assert missing.status == 404
    gone = await admin.get("/admin/connections/other-node/1", headers=BEARER)
    assert gone.status == 404 and "another node" in await gone.text()
    assert (await admin.get(f"/admin/connections/{client.id}")).status == 401
    await ws.close()
    await until(lambda: not admin.app[HUB].clients)
    assert (await admin.get(f"/admin/api/connections/{client.id}", headers=BEARER)).status == 404


# --- event stream -------------------------------------------------------------------------


async def test_stream_shows_connect_join_publish_disconnect(admin: Client) -> None:
    tap = admin.app[TAP]
    assert not tap.active  # nobody watching: the chat path pays nothing
    ws = await open_stream(admin)
    assert tap.active
    a, welcome = await connect(admin, "alice")
    await join(a, "lobby")
    await a.send_json({"type": "chat", "room": "lobby", "text": 'say "hi"\n'})
    await recv_type(a, "chat")
    await a.send_json({"type": "nope"})
    await recv_type(a, "error")
    await a.close()
    events = await events_until(ws, has_kind("DISCONNECT"))
    kinds = [e["kind"] for e in events]
    for kind in ("CONNECT", "JOIN", "PRESENCE", "PUBLISH", "ERROR", "LEAVE", "DISCONNECT"):
        assert kind in kinds, kinds
    assert kinds.index("CONNECT") < kinds.index("JOIN") < kinds.index("PUBLISH")
    lines = {e["kind"]: e["line"] for e in events}
    for line in lines.values():
        assert LINE.match(line), line
    publish = LINE.match(lines["PUBLISH"])
    assert publish and publish["node"] == "test-node" and publish["addr"].startswith("127.0.0.1:")
    assert publish["rest"].startswith(' "gochat:room:lobby" "{\\"type\\":\\"chat\\"')
    assert '\\"text\\":\\"say \\\\\\"hi\\\\\\"\\"' in publish["rest"]  # quoted like MONITOR
    pub = next(e for e in events if e["kind"] == "PUBLISH")
    assert pub["room"] == "lobby" and pub["user"] == welcome["userId"]
    assert pub["node"] == "test-node"
    conn_id = next(e for e in events if e["kind"] == "CONNECT")["conn"]
    # the display name beside the (anonymous, random-looking) userId
    assert next(e for e in events if e["kind"] == "CONNECT")["args"] == [
        conn_id,
        welcome["userId"],
        "alice",
    ]
    assert next(e for e in events if e["kind"] == "JOIN")["args"] == [
        "lobby",
        welcome["userId"],
        "alice",
    ]
    disconnect = next(e for e in events if e["kind"] == "DISCONNECT")
    assert disconnect["args"] == [conn_id, "1000"]  # with the close code
    assert welcome["name"] == "alice"
    await ws.close()
    await until(lambda: not admin.app[CONSOLE].viewers, what="viewer gone")


async def test_stream_filters_by_room_user_node_and_kind(admin: Client) -> None:
    ws = await open_stream(admin)
    await ws.send_json({"type": "filter", "room": "a", "kinds": ["PUBLISH"]})
    await until(lambda: next(iter(admin.app[CONSOLE].viewers)).filter.room == "a")
    x, _ = await connect(admin, "xavier")
    y, yvonne = await connect(admin, "yvonne")
    for c in (x, y):
        await join(c, "a")
        await join(c, "b")
    # filters apply to what arrives after they do; the filter went before these
    await x.send_json({"type": "chat", "room": "b", "text": "in b"})
    await x.send_json({"type": "chat", "room": "a", "text": "in a"})
    events = await events_until(ws, has_kind("PUBLISH"))
    assert [(e["kind"], e["room"]) for e in events] == [("PUBLISH", "a")]

    yid = yvonne["userId"]
    await ws.send_json({"type": "filter", "user": yid})
    await until(lambda: next(iter(admin.app[CONSOLE].viewers)).filter.user == yid)
    await x.send_json({"type": "chat", "room": "a", "text": "x again"})
    await y.send_json({"type": "chat", "room": "b", "text": "y here"})
    events = await events_until(ws, has_kind("PUBLISH", user=yid))
    assert {e["user"] for e in events} == {yid}

    await ws.send_json({"type": "filter", "node": "other-node"})
    await ws.send_json({"type": "filter", "text": "MARKER", "kinds": ["PUBLISH", "BOGUS"]})
    await until(lambda: next(iter(admin.app[CONSOLE].viewers)).filter.text == "MARKER")
    await y.send_json({"type": "chat", "room": "b", "text": "plain"})
    await y.send_json({"type": "chat", "room": "b", "text": "with marker"})
    events = await events_until(ws, has_kind("PUBLISH"))
    assert len(events) == 1 and "with marker" in events[0]["line"]
    for c in (x, y, ws):
        await c.close()


def test_event_filter_unit() -> None:
    ev = {"kind": "JOIN", "node": "n1", "room": "r", "user": "u", "line": 'x "JOIN" "r"'}
    assert EventFilter().matches(ev)
    assert EventFilter.from_json({"kinds": []}).matches(ev) is False  # none ticked
    assert EventFilter.from_json({"kinds": ["JOIN"], "room": " r "}).matches(ev)
    assert not EventFilter.from_json({"node": "n2"}).matches(ev)
    assert not EventFilter.from_json({"user": 5, "room": "other"}).matches(ev)
    assert EventFilter.from_json({"text": "join"}).matches(ev)


async def test_feed_is_bounded_and_drops_oldest() -> None:
    feed = Feed(3)
    for i in range(5):
        feed.push({"i": i})
    items, dropped = await feed.take()
    assert [x["i"] for x in items] == [2, 3, 4] and dropped == 2
    assert len(feed) == 0


async def test_sink_detaches_when_nobody_watches(admin: Client) -> None:
    console = admin.app[CONSOLE]
    tap = admin.app[TAP]
    ws = await open_stream(admin)
    assert tap.active
    await ws.close()
    await until(lambda: not console.viewers, what="viewer gone")
    console.tick(time.time() + WATCH_TTL + 1)
    assert not tap.active


# --- cluster wiring -----------------------------------------------------------------------


class RecordingBroker(MemoryBroker):
    """A memory broker that also reports a second node and records the events channel."""

    def __init__(self) -> None:
        super().__init__("test-node", 100)
        self.published: list[bytes] = []

    def publish_event(self, data: bytes) -> None:
        self.published.append(data)
        super().publish_event(data)

    async def nodes(self) -> list[dict[str, Any]]:
        return [*await super().nodes(), {"id": "node-b", "broker": "memory", "ready": True}]


async def test_events_channel_round_trip_and_remote_kick(aiohttp_client: Any) -> None:
    broker = RecordingBroker()
    client: Client = await aiohttp_client(
        create_app(make_settings(admin_token=TOKEN), broker=broker)
    )
    console = client.app[CONSOLE]
    ws = await open_stream(client)
    broker.published.clear()
    a, _ = await connect(client, "alice")
    events = await events_until(ws, has_kind("CONNECT"))
    # one local event -> exactly one message on the channel; receiving it publishes nothing
    assert [m[:1] for m in broker.published] == [b"e"]
    assert json.loads(broker.published[0][1:])["kind"] == "CONNECT"
    conn_id = events[0]["conn"]

    # another node's event reaches the local viewers
    other = {"ts": 1.0, "node": "node-b", "addr": "10.0.0.7:5", "kind": "JOIN", "args": ["r"]}
    console.cluster_event(b"e" + json.dumps(other).encode())
    seen = await events_until(ws, has_kind("JOIN"))
    assert seen[0]["line"] == '1.000000 [node-b 10.0.0.7:5] "JOIN" "r"'
    console.cluster_event(b"e{not json")  # ignored, logged

    # a kick for a connection on node-b travels as a control message ...
    resp = await client.post("/admin/api/kick", json={"conn": "node-b/9"}, headers=BEARER)
    assert resp.status == 202 and (await resp.json())["status"] == "sent"
    request = json.loads(broker.published[-1][1:])
    assert request["ctl"] == "KICK_REQUEST" and request["conn"] == "node-b/9"
    # ... and a KICK_REQUEST from elsewhere for our connection is carried out here
    console.cluster_event(
        b"c"
        + json.dumps({"ctl": "KICK_REQUEST", "conn": conn_id, "reason": "r", "by": "x"}).encode()
    )
    assert await expect_close(a) == 4001
    missing = await client.post("/admin/api/kick", json={"conn": "node-z/1"}, headers=BEARER)
    assert missing.status == 404
    await ws.close()


# --- actions ------------------------------------------------------------------------------


async def test_kick_closes_with_4001_and_is_audited(admin: Client) -> None:
    ws = await open_stream(admin)
    a, _ = await connect(admin, "mallory")
    (client,) = admin.app[HUB].clients.values()
    resp = await admin.post(
        "/admin/api/kick", json={"conn": client.id, "reason": "spamming"}, headers=BEARER
    )
    assert resp.status == 200 and (await resp.json())["status"] == "kicked"
    msg = await a.receive(timeout=TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 4001 and msg.extra == "spamming"
    events = await events_until(ws, has_kind("DISCONNECT"))
    kick = next(e for e in events if e["kind"] == "KICK")
    assert kick["args"] == [client.id, client.user_id, "spamming"]
    assert kick["addr"].startswith("127.0.0.1:")  # the operator's address
    disconnect = next(e for e in events if e["kind"] == "DISCONNECT")
    assert disconnect["args"][-1] == "4001"
    again = await admin.post("/admin/api/kick", json={"conn": client.id}, headers=BEARER)
    assert again.status == 404
    assert (await admin.post("/admin/api/kick", json={}, headers=BEARER)).status == 400
    assert (await admin.post("/admin/api/kick", data=b"[1]", headers=BEARER)).status == 400
    await ws.close()


async def test_long_kick_reason_is_cut_on_a_character_boundary(admin: Client) -> None:
    a, _ = await connect(admin, "victim")
    (client,) = admin.app[HUB].clients.values()
    reason = "é" * 100  # 200 bytes: more than a close frame carries
    resp = await admin.post(
        "/admin/api/kick", json={"conn": client.id, "reason": reason}, headers=BEARER
    )
    assert resp.status == 200
    msg = await a.receive(timeout=TIMEOUT)
    assert msg.data == 4001 and msg.extra == "é" * 60


async def test_notice_reaches_the_room_and_its_history(admin: Client) -> None:
    ws = await open_stream(admin)
    a, _ = await connect(admin, "alice")
    await join(a, "lobby")
    resp = await admin.post(
        "/admin/api/notice", json={"room": "lobby", "text": " maintenance at 10 "}, headers=BEARER
    )
    assert resp.status == 200
    got = await recv_type(a, "chat")
    assert got["userId"] == "system" and got["name"] == "system" and got["system"] is True
    assert got["text"] == "maintenance at 10" and got["id"] == (await resp.json())["id"]
    b, _ = await connect(admin, "bob")
    joined = await join(b, "lobby")
    assert [m["text"] for m in joined["history"]] == ["maintenance at 10"]
    events = await events_until(ws, has_kind("NOTICE"))
    notice = next(e for e in events if e["kind"] == "NOTICE")
    assert notice["args"][:2] == ["gochat:room:lobby", "maintenance at 10"]
    bad = await admin.post(
        "/admin/api/notice", json={"room": "no spaces", "text": "x"}, headers=BEARER
    )
    assert bad.status == 400 and (await bad.json())["error"] == "bad_room"
    empty = await admin.post("/admin/api/notice", json={"room": "lobby"}, headers=BEARER)
    assert empty.status == 400
    await ws.close()


# --- metrics ------------------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} missing"
    return float(match.group(1))


async def test_metrics(make_chat: MakeChat) -> None:
    admin = await make_chat(admin_token=TOKEN)
    other = await make_chat(admin_token=TOKEN)  # a second app in the process: own registry
    a, _ = await connect(admin, "alice")
    await join(a, "lobby")
    for i in range(3):
        await a.send_json({"type": "chat", "room": "lobby", "text": f"m{i}"})
        await recv_type(a, "chat")
    await a.send_str("not json")
    await recv_type(a, "error")
    resp = await admin.get("/metrics", headers=BEARER)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert metric(text, "gochat_connections") == 1
    assert metric(text, "gochat_rooms") == 1
    assert metric(text, "gochat_messages_in_total") == 5
    assert metric(text, "gochat_messages_out_total") >= 6
    writes = metric(text, "gochat_socket_writes_total")
    assert 1 <= writes <= metric(text, "gochat_messages_out_total")
    assert metric(text, "gochat_messages_published_total") == 3
    assert metric(text, 'gochat_errors_total{code="bad_json"}') == 1
    assert metric(text, "gochat_slow_consumer_closes_total") == 0
    assert metric(text, "gochat_broker_reconnects_total") == 0
    assert metric(text, "gochat_broker_up") == 1
    assert metric(text, "gochat_fanout_latency_seconds_count") == 3
    assert metric(text, 'gochat_fanout_latency_seconds_bucket{le="+Inf"}') == 3
    await a.close()
    await until(lambda: not admin.app[HUB].clients)
    after = await (await admin.get("/metrics", headers=BEARER)).text()
    assert metric(after, "gochat_messages_in_total") == 5  # kept after the disconnect
    assert metric(after, "gochat_connections") == 0
    quiet = await (await other.get("/metrics", headers=BEARER)).text()
    assert metric(quiet, "gochat_messages_published_total") == 0


def test_message_ts_parsing() -> None:
    wire = (
        b'{"type":"chat","id":"1-0","room":"r","userId":"u","name":"n",'
        b'"text":",\\"ts\\":5","ts":1732740000123,"cid":"c"}'
    )
    assert message_ts_ms(wire) == 1732740000123
    assert message_ts_ms(wire.replace(b',"cid":"c"', b"")) == 1732740000123  # ts last
    assert message_ts_ms(b'{"type":"chat"}') is None
    assert message_ts_ms(b'{"type":"chat","ts":x1}') is None


def test_latency_histogram_renders_as_prometheus_client_does() -> None:
    """The fan-out histogram is hand-rolled for speed; its exposition must match the
    library's (but for the `_created` sample, which ours does not have)."""
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h_seconds", "doc", buckets=LATENCY_BUCKETS, registry=theirs)
    mine = LatencyHistogram("h_seconds", "doc", LATENCY_BUCKETS)
    ours.register(mine)
    for seconds in (0.0, 0.001, 0.0011, 0.3, 2.5, 7.0):
        reference.observe(seconds)
        mine.observe(seconds)
    expected = [x for x in generate_latest(theirs).decode().splitlines() if "_created" not in x]
    assert generate_latest(ours).decode().splitlines() == expected


async def test_shutdown_closes_console_streams_with_1001(admin: Client) -> None:
    ws = await open_stream(admin)
    await admin.app[CONSOLE].close_viewers()
    assert await expect_close(ws) == 1001
    await until(lambda: not admin.app[CONSOLE].viewers, what="viewer gone")
