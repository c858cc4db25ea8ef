"""The server HTTP API under /api (issue 18, item 1), over real HTTP on real sockets.

In memory: every route, every refusal and its status, the key and its throttle, the audit of
the kick and the notice, the OpenAPI document. On Redis (two in-process nodes on a
redis-server of the test's own): a message posted on one node reaches the other's members in
the room's one order, rooms and members are cluster-wide, the kick and the notice cross
nodes, and every route answers 503 while Redis is down. Last, the README's examples, run as
written with curl against a real gochat process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
from typing import Any

import aiohttp
import pytest

from gochat.__main__ import build_parser
from gochat.api.models import ERROR_CODES, ChatMessage, HistoryPage
from gochat.config import Settings
from gochat.events import Event
from gochat.keys import BROKER, HUB, TAP
from gochat.protocol import ErrorCode

from .cluster import nodes, until_ready
from .console import BEARER, TOKEN
from .procs import Node
from .redis_server import RedisServer
from .util import ROOT, TIMEOUT, Chat, connect, expect_close, join, recv_type, until

KEY = "test-api-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}

# Every route, with a body it accepts where it takes one.
ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/api/rooms/lobby/messages", {"text": "hi"}),
    ("GET", "/api/rooms", None),
    ("GET", "/api/rooms/lobby/members", None),
    ("GET", "/api/rooms/lobby/history", None),
    ("POST", "/api/rooms/lobby/notice", {"text": "hi"}),
    ("POST", "/api/connections/test-node%2F999/disconnect", None),
    ("GET", "/api/openapi.json", None),
]

MakeChat = Any


class _AnyText:
    """Equal to any non-empty string: to compare a whole body whose message may vary."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)


ANY_TEXT: Any = _AnyText()


async def api_node(make_chat: MakeChat, **extra: Any) -> Chat:
    """An app with the API on (and the console's token known, to compare with it)."""
    chat: Chat = await make_chat(api_key=KEY, admin_token=TOKEN, **extra)
    return chat


async def call(
    chat: Chat,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """One request; (status, JSON body)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    resp = await chat.request(method, path, data=data, headers=AUTH if headers is None else headers)
    text = await resp.text()
    assert resp.content_type == "application/json", (resp.status, text)
    return resp.status, json.loads(text)


def tap_events(chat: Chat) -> list[Event]:
    """Every event the app's tap emits from now on."""
    seen: list[Event] = []
    chat.app[TAP].attach(seen.append)
    return seen


# --- on or off, the key, the throttle ----------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_without_a_key_set_every_api_path_answers_404(
    make_chat: MakeChat, method: str, path: str, body: Any
) -> None:
    chat = await make_chat()
    assert chat.app[HUB].settings.api_key is None
    resp = await chat.request(method, path, json=body, headers=AUTH)
    assert resp.status == 404
    resp = await chat.request(method, path, json=body)
    assert resp.status == 404


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_every_route_needs_the_key(
    make_chat: MakeChat, method: str, path: str, body: Any
) -> None:
    chat = await api_node(make_chat)
    for headers in (
        {},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Bearer {TOKEN}"},  # the console's token is not the API's key
    ):
        resp = await chat.request(method, path, json=body, headers=headers)
        assert resp.status == 401, (headers, await resp.text())
        assert await resp.json() == {"error": "unauthorized", "message": ANY_TEXT}
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gochat api"'
    ok = await chat.request(method, path, json=body, headers=AUTH)
    assert ok.status in (200, 201, 404), await ok.text()  # 404: no such connection
    if ok.status == 404:
        assert (await ok.json())["error"] == "not_found"


async def test_wrong_keys_are_throttled_per_address_and_logged(
    make_chat: MakeChat, caplog: pytest.LogCaptureFixture
) -> None:
    chat = await api_node(make_chat)
    caplog.set_level(logging.WARNING, logger="gochat.api.access")
    for _ in range(20):  # the right key is never counted against the address
        assert (await call(chat, "GET", "/api/rooms"))[0] == 200
    wrong = {"Authorization": "Bearer nope"}
    for _ in range(5):
        status, body = await call(chat, "GET", "/api/rooms", headers=wrong)
        assert (status, body["error"]) == (401, "unauthorized")
    assert sum("api: wrong or undecodable key" in r.getMessage() for r in caplog.records) == 5
    resp = await chat.get("/api/rooms", headers=wrong)
    assert resp.status == 429 and (await resp.json())["error"] == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    # while throttled, the right key waits too (a guess cannot be told apart from it) ...
    status, body = await call(chat, "GET", "/api/rooms")
    assert (status, body["error"]) == (429, "rate_limited")
    # ... but the console's own throttle is another: its token still works from here
    snapshot = await chat.get("/admin/api/snapshot", headers=BEARER)
    assert snapshot.status == 200


# --- posting a message ---------------------------------------------------------------------


async def test_a_posted_message_takes_the_chat_path_in_order_with_client_messages(
    make_chat: MakeChat,
) -> None:
    chat = await api_node(make_chat)
    events = tap_events(chat)
    alice, _ = await connect(chat, "alice")
    bob, _ = await connect(chat, "bob")
    await join(alice, "lobby")
    await join(bob, "lobby")
    expected: list[str] = []
    ids: list[str] = []
    for i in range(5):
        await alice.send_json({"type": "chat", "room": "lobby", "text": f"c{i}"})
        expected.append(f"c{i}")
        ids.append((await recv_type(alice, "chat"))["id"])  # published before the next post
        status, body = await call(
            chat,
            "POST",
            "/api/rooms/lobby/messages",
            {"text": f"  a{i}  ", "cid": f"k{i}"} | ({"name": "CI bot"} if i else {}),
        )
        assert status == 201, body
        expected.append(f"a{i}")
        ids.append(body["id"])
        assert (await recv_type(alice, "chat"))["id"] == body["id"]
    got = [await recv_type(bob, "chat") for _ in expected]
    assert [m["text"] for m in got] == expected
    assert [m["id"] for m in got] == ids
    for m in got:
        ChatMessage.model_validate(m)
        if m["text"].startswith("a"):
            assert m["via"] == "api" and m["userId"] == "api" and m["cid"] == "k" + m["text"][1:]
            assert m["name"] == ("api" if m["text"] == "a0" else "CI bot")
        else:
            assert "via" not in m and m["name"] == "alice"
    # kept in the history in that order, and shown on the tap as a PUBLISH by the API
    status, page = await call(chat, "GET", "/api/rooms/lobby/history")
    assert [m["id"] for m in page["messages"]] == ids
    published = [e for e in events if e.kind == "PUBLISH" and e.addr.startswith("api@")]
    assert len(published) == 5 and all(e.room == "lobby" and e.user == "api" for e in published)
    assert json.loads(published[0].args[1])["id"] == ids[1]
    for ws in (alice, bob):
        await ws.close()


async def test_a_posted_message_may_name_its_sender(make_chat: MakeChat) -> None:
    chat = await api_node(make_chat)
    carol, _ = await connect(chat, "carol")
    await join(carol, "ops")
    body = {"text": "deployed", "userId": "deploy-bot", "name": "Deploy Bot"}
    assert (await call(chat, "POST", "/api/rooms/ops/messages", body))[0] == 201
    msg = await recv_type(carol, "chat")
    assert (msg["userId"], msg["name"], msg["via"], msg["text"]) == (
        "deploy-bot",
        "Deploy Bot",
        "api",
        "deployed",
    )
    await carol.close()


async def test_a_repeated_cid_is_posted_once(make_chat: MakeChat) -> None:
    """Sent once: an integration that retries a post it got no answer for (same userId and
    cid) gets the first message's id back; the room gets one message."""
    chat = await api_node(make_chat)
    carol, _ = await connect(chat, "carol")
    await join(carol, "ops")
    body = {"text": "deployed", "userId": "deploy-bot", "cid": "deploy-42"}
    status, first = await call(chat, "POST", "/api/rooms/ops/messages", body)
    assert status == 201
    status, again = await call(chat, "POST", "/api/rooms/ops/messages", body | {"text": "2nd"})
    assert (status, again) == (201, first)
    other = await call(chat, "POST", "/api/rooms/ops/messages", body | {"userId": "other-bot"})
    assert other[0] == 201 and other[1] != first  # the cid is per user
    got = [await recv_type(carol, "chat") for _ in range(2)]
    assert [(m["id"], m["userId"]) for m in got] == [
        (first["id"], "deploy-bot"),
        (other[1]["id"], "other-bot"),
    ]
    history = (await call(chat, "GET", "/api/rooms/ops/history"))[1]["messages"]
    assert [m["text"] for m in history] == ["deployed", "deployed"]
    await carol.close()


LONG = "x" * 11  # over max_text=10 below

REFUSED_POSTS: list[tuple[str, str, bytes, str]] = [
    ("bad room", "a*b", b'{"text":"hi"}', "bad_room"),
    ("room too long", "r" * 65, b'{"text":"hi"}', "bad_room"),
    ("not JSON", "lobby", b"{", "bad_json"),
    ("not an object", "lobby", b'["hi"]', "bad_json"),
    ("empty body", "lobby", b"", "bad_json"),
    ("repeated key", "lobby", b'{"text":"a","text":"b"}', "bad_json"),
    ("NaN", "lobby", b'{"text":"hi","x":NaN}', "bad_json"),
    ("not UTF-8", "lobby", b'{"text":"\xff"}', "bad_json"),
    ("no text", "lobby", b'{"name":"bot"}', "bad_message"),
    ("text not a string", "lobby", b'{"text":5}', "bad_message"),
    ("empty text", "lobby", b'{"text":"   "}', "bad_message"),
    ("NUL in text", "lobby", b'{"text":"a\\u0000b"}', "bad_message"),
    ("bidi override", "lobby", b'{"text":"a\\u202eb"}', "bad_message"),
    ("lone surrogate", "lobby", b'{"text":"a\\ud800b"}', "bad_message"),
    ("reserved name", "lobby", b'{"text":"hi","name":"System"}', "bad_message"),
    ("reserved userId", "lobby", b'{"text":"hi","userId":"ADMIN"}', "bad_message"),
    ("name too long", "lobby", b'{"text":"hi","name":"' + b"n" * 33 + b'"}', "bad_message"),
    ("empty name", "lobby", b'{"text":"hi","name":" "}', "bad_message"),
    ("userId a number", "lobby", b'{"text":"hi","userId":7}', "bad_message"),
    ("cid too long", "lobby", b'{"text":"hi","cid":"' + b"c" * 65 + b'"}', "bad_message"),
    ("cid with a control", "lobby", b'{"text":"hi","cid":"a\\u0007"}', "bad_message"),
    ("text too long", "lobby", b'{"text":"' + LONG.encode() + b'"}', "too_long"),
]


@pytest.mark.parametrize(
    ("room", "raw", "code"), [r[1:] for r in REFUSED_POSTS], ids=[r[0] for r in REFUSED_POSTS]
)
async def test_a_refused_post_answers_400_with_the_chat_code(
    make_chat: MakeChat, room: str, raw: bytes, code: str
) -> None:
    chat = await api_node(make_chat, max_text=10)
    member, _ = await connect(chat, "member")
    await join(member, "lobby")
    status, body = await call(chat, "POST", f"/api/rooms/{room}/messages", raw=raw)
    assert (status, body["error"]) == (400, code), body
    assert body["message"] and code in ERROR_CODES
    # nothing was published: the next message is the first the member sees
    assert (await call(chat, "POST", "/api/rooms/lobby/messages", {"text": "ok"}))[0] == 201
    assert (await recv_type(member, "chat"))["text"] == "ok"
    await member.close()


async def test_text_at_the_limit_passes_and_a_body_over_max_frame_is_413(
    make_chat: MakeChat,
) -> None:
    chat = await api_node(make_chat, max_text=10, max_frame=256)
    assert (await call(chat, "POST", "/api/rooms/lobby/messages", {"text": "x" * 10}))[0] == 201
    status, body = await call(
        chat, "POST", "/api/rooms/lobby/messages", {"text": "hi", "pad": "p" * 300}
    )
    assert (status, body["error"]) == (413, "too_long")


# --- reading: rooms, members, history --------------------------------------------------------


async def test_rooms_and_members(make_chat: MakeChat) -> None:
    chat = await api_node(make_chat)
    assert await call(chat, "GET", "/api/rooms") == (200, {"rooms": []})
    alice, a = await connect(chat, "alice")
    alice2, _ = await connect(chat, "alice")  # a second tab: still one member
    bob, b = await connect(chat, "bob")
    for ws, room in ((alice, "lobby"), (alice2, "lobby"), (bob, "lobby"), (bob, "ops")):
        await join(ws, room)
    status, body = await call(chat, "GET", "/api/rooms")
    assert body == {"rooms": [{"room": "lobby", "members": 2}, {"room": "ops", "members": 1}]}
    status, body = await call(chat, "GET", "/api/rooms/lobby/members")
    assert status == 200
    assert sorted(body["members"], key=lambda m: m["name"]) == [
        {"userId": a["userId"], "name": "alice"},
        {"userId": b["userId"], "name": "bob"},
    ]
    assert await call(chat, "GET", "/api/rooms/empty/members") == (200, {"members": []})
    status, body = await call(chat, "GET", "/api/rooms/a%20b/members")
    assert (status, body["error"]) == (400, "bad_room")
    await bob.close()
    await until(lambda: "ops" not in chat.app[HUB].rooms, what="ops emptied")
    assert (await call(chat, "GET", "/api/rooms"))[1] == {
        "rooms": [{"room": "lobby", "members": 1}]
    }
    for ws in (alice, alice2):
        await ws.close()


async def test_history_since_and_limit(make_chat: MakeChat) -> None:
    chat = await api_node(make_chat, history=5)
    ids = []
    for i in range(7):  # two more than are kept
        status, body = await call(chat, "POST", "/api/rooms/lobby/messages", {"text": f"m{i}"})
        ids.append(body["id"])

    async def page(query: str) -> tuple[list[str], bool | None]:
        status, body = await call(chat, "GET", "/api/rooms/lobby/history" + query)
        assert status == 200, body
        HistoryPage.model_validate(body)
        return [m["text"] for m in body["messages"]], body["recovered"]

    assert await page("") == (["m2", "m3", "m4", "m5", "m6"], None)
    assert await page("?limit=2") == (["m5", "m6"], None)  # the newest
    assert await page(f"?since={ids[3]}") == (["m4", "m5", "m6"], True)
    assert await page(f"?since={ids[3]}&limit=2") == (["m4", "m5"], True)  # the first after
    assert await page(f"?since={ids[6]}") == ([], True)
    assert await page(f"?since={ids[0]}") == (["m2", "m3", "m4", "m5", "m6"], False)  # trimmed
    assert await page("?since=nonsense&limit=5") == (["m2", "m3", "m4", "m5", "m6"], False)
    assert await call(chat, "GET", "/api/rooms/other/history") == (
        200,
        {"messages": [], "recovered": None},
    )


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("?limit=0", "bad_message"),
        ("?limit=6", "bad_message"),  # over GOCHAT_HISTORY
        ("?limit=-1", "bad_message"),
        ("?limit=two", "bad_message"),
        ("?limit=1_0", "bad_message"),
        ("?limit=%202", "bad_message"),
        ("?limit=", "bad_message"),
        ("?since=", "bad_message"),
        ("?since=" + "1" * 65, "bad_message"),
        ("?since=%1b%5b2J", "bad_message"),  # a terminal escape
    ],
)
async def test_history_refuses_a_bad_since_or_limit(
    make_chat: MakeChat, query: str, code: str
) -> None:
    chat = await api_node(make_chat, history=5)
    status, body = await call(chat, "GET", "/api/rooms/lobby/history" + query)
    assert (status, body["error"]) == (400, code), body
    status, body = await call(chat, "GET", "/api/rooms/a*b/history")
    assert (status, body["error"]) == (400, "bad_room")


# --- the console's actions, for machines ---------------------------------------------------


async def test_a_notice_reaches_the_members_returns_their_count_and_is_audited(
    make_chat: MakeChat, caplog: pytest.LogCaptureFixture
) -> None:
    chat = await api_node(make_chat)
    caplog.set_level(logging.WARNING, logger="gochat.console.state")
    events = tap_events(chat)
    alice, _ = await connect(chat, "alice")
    bob, _ = await connect(chat, "bob")
    await join(alice, "lobby")
    await join(bob, "lobby")
    status, body = await call(chat, "POST", "/api/rooms/lobby/notice", {"text": " closing soon "})
    assert status == 200 and body["members"] == 2
    for ws in (alice, bob):
        msg = await recv_type(ws, "chat")
        assert (msg["id"], msg["userId"], msg["system"], msg["text"]) == (
            body["id"],
            "system",
            True,
            "closing soon",
        )
        assert "via" not in msg  # the console's notice, not a message of the API's
    notices = [e for e in events if e.kind == "NOTICE"]
    assert len(notices) == 1 and notices[0].addr.startswith("api@127.0.0.1:")
    assert any(
        "api@127.0.0.1" in r.getMessage() and "sent a notice" in r.getMessage()
        for r in caplog.records
    )
    for raw, code in (
        (b'{"text":"   "}', "bad_message"),
        (b'{"text":"a\\u0000"}', "bad_message"),
        (b"{}", "bad_message"),
        (b"nope", "bad_json"),
        (b'{"text":"' + b"x" * 4097 + b'"}', "too_long"),
    ):
        status, err = await call(chat, "POST", "/api/rooms/lobby/notice", raw=raw)
        assert (status, err["error"]) == (400, code), (raw[:20], err)
    status, err = await call(chat, "POST", "/api/rooms/no%20room/notice", {"text": "x"})
    assert (status, err["error"]) == (400, "bad_room")
    assert await call(chat, "POST", "/api/rooms/empty/notice", {"text": "x"}) == (
        200,
        {"id": ANY_TEXT, "members": 0},
    )
    for ws in (alice, bob):
        await ws.close()


@pytest.mark.parametrize("slash", ["/", "%2F"])
async def test_disconnect_closes_with_4001_and_is_audited(
    make_chat: MakeChat, caplog: pytest.LogCaptureFixture, slash: str
) -> None:
    chat = await api_node(make_chat)
    caplog.set_level(logging.WARNING, logger="gochat.console.state")
    events = tap_events(chat)
    mallory, _ = await connect(chat, "mallory")
    conn = next(iter(chat.app[HUB].clients))
    node, _, n = conn.rpartition("/")
    path = f"/api/connections/{node}{slash}{n}/disconnect"
    assert await call(chat, "POST", path, {"reason": "spam"}) == (200, {"status": "kicked"})
    assert await expect_close(mallory) == 4001
    assert mallory.close_code == 4001
    kicks = [e for e in events if e.kind == "KICK"]
    assert len(kicks) == 1 and kicks[0].conn == conn and kicks[0].addr.startswith("api@")
    assert kicks[0].args[-1] == "spam"
    assert any("api@" in r.getMessage() and "kicked" in r.getMessage() for r in caplog.records)
    # gone now, and never known: 404
    for unknown in (f"{node}{slash}{n}", "test-node%2F999", "x"):
        status, body = await call(chat, "POST", f"/api/connections/{unknown}/disconnect")
        assert (status, body["error"]) == (404, "not_found"), unknown
    status, body = await call(chat, "POST", path, raw=b"[")
    assert (status, body["error"]) == (400, "bad_json")


async def test_a_kick_without_a_reason_gives_one(make_chat: MakeChat) -> None:
    chat = await api_node(make_chat)
    ws, _ = await connect(chat, "eve")
    conn = next(iter(chat.app[HUB].clients))
    resp = await chat.post(f"/api/connections/{conn}/disconnect", headers=AUTH)
    assert resp.status == 200
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4001
    assert msg.extra == "disconnected by the server API"


# --- the rest of the surface ---------------------------------------------------------------


async def test_unknown_paths_and_methods_answer_json(make_chat: MakeChat) -> None:
    chat = await api_node(make_chat)
    status, body = await call(chat, "GET", "/api/nothing/here")
    assert (status, body["error"]) == (404, "not_found")
    resp = await chat.get("/api/rooms/lobby/messages", headers=AUTH)
    assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"
    assert resp.headers["Allow"] == "POST"
    assert resp.headers["Cache-Control"] == "no-store"
    assert "Content-Security-Policy" in resp.headers  # the app's headers apply here too
    # an unknown path without the key is refused before anything is said about it
    assert (await chat.get("/api/nothing/here")).status == 401


async def test_the_openapi_document_describes_every_route(make_chat: MakeChat) -> None:
    chat = await api_node(make_chat)
    status, doc = await call(chat, "GET", "/api/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    schemas = doc["components"]["schemas"]
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc))
    assert refs and set(refs) <= set(schemas)
    assert schemas["PostMessage"]["required"] == ["text"]
    assert set(schemas["ApiError"]["properties"]["error"]["enum"]) == set(ERROR_CODES)
    assert {c for c in ERROR_CODES if c not in ("not_found", "method_not_allowed")} <= {
        e.value for e in ErrorCode
    }
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {
        (m, re.sub(r"/test-node%2F999/", "/{id}/", p).replace("/lobby/", "/{room}/"))
        for m, p, _ in ROUTES
        if not p.endswith("openapi.json")
    }
    assert documented == served
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert "401" in op["responses"] and "429" in op["responses"], path
            for name in re.findall(r"\{(\w+)\}", path):
                assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"])
    post = doc["paths"]["/api/rooms/{room}/messages"]["post"]
    assert set(post["responses"]) == {"201", "400", "401", "413", "429", "503"}
    history = doc["paths"]["/api/rooms/{room}/history"]["get"]
    assert {p["name"] for p in history["parameters"]} == {"room", "since", "limit"}


def test_the_key_is_a_setting_read_from_env_and_flag_and_kept_out_of_repr() -> None:
    settings = Settings.from_env({"GOCHAT_API_KEY": KEY})
    assert settings.api_key == KEY and KEY not in repr(settings)
    assert Settings.from_env({"GOCHAT_API_KEY": ""}).api_key is None
    assert Settings.from_env({}).api_key is None
    args = build_parser().parse_args(["--api-key", "from-flag"])
    assert args.api_key == "from-flag"
    assert Settings.from_env({"GOCHAT_API_KEY": KEY}, api_key=args.api_key).api_key == "from-flag"


# --- two nodes on Redis ---------------------------------------------------------------------


@pytest.mark.redis
async def test_a_message_posted_on_one_node_reaches_the_other_in_the_rooms_order(
    redis_server: RedisServer, make_chat: MakeChat
) -> None:
    n1, n2 = await nodes(make_chat, redis_server, "n1", "n2", api_key=KEY)
    alice, _ = await connect(n1, "alice")
    bob, _ = await connect(n2, "bob")
    await join(alice, "lobby")
    await join(bob, "lobby")
    await recv_type(alice, "presence")  # bob's online: both are members everywhere
    # one after another: a client's message, then the API's, each published before the next
    expected: list[str] = []
    for i in range(3):
        await alice.send_json({"type": "chat", "room": "lobby", "text": f"c{i}"})
        await recv_type(alice, "chat")
        status, body = await call(n1, "POST", "/api/rooms/lobby/messages", {"text": f"a{i}"})
        assert status == 201
        assert (await recv_type(alice, "chat"))["id"] == body["id"]
        expected += [f"c{i}", f"a{i}"]
    got = [await recv_type(bob, "chat") for _ in expected]
    assert [m["text"] for m in got] == expected
    assert all(m["via"] == "api" for m in got if m["text"].startswith("a"))
    # then all at once, from both: each node sees the one order Redis gave them
    posts = [
        call(n1 if i % 2 else n2, "POST", "/api/rooms/lobby/messages", {"text": f"p{i}"})
        for i in range(20)
    ]
    for i in range(20):
        await alice.send_json({"type": "chat", "room": "lobby", "text": f"w{i}"})
    answers = await asyncio.gather(*posts)
    assert all(status == 201 for status, _ in answers)
    on_n1 = [(await recv_type(alice, "chat"))["id"] for _ in range(40)]
    on_n2 = [(await recv_type(bob, "chat"))["id"] for _ in range(40)]
    assert on_n1 == on_n2 and len(set(on_n1)) == 40
    assert {body["id"] for _, body in answers} <= set(on_n1)
    # and the history, asked of either node, is that order too
    for node in (n1, n2):
        status, page = await call(node, "GET", "/api/rooms/lobby/history?limit=40")
        assert [m["id"] for m in page["messages"]] == on_n1
    for ws in (alice, bob):
        await ws.close()


@pytest.mark.redis
async def test_rooms_members_notice_and_disconnect_are_cluster_wide(
    redis_server: RedisServer, make_chat: MakeChat
) -> None:
    n1, n2 = await nodes(make_chat, redis_server, "n1", "n2", api_key=KEY)
    alice, a = await connect(n1, "alice")
    bob, b = await connect(n2, "bob")
    bob_n1, _ = await connect(n1, "bob")  # the same user on both nodes: one member
    await join(alice, "lobby")
    await join(bob, "lobby")
    await join(bob_n1, "lobby")
    await join(alice, "n1-only")
    await join(bob, "n2-only")
    for node in (n1, n2):
        status, body = await call(node, "GET", "/api/rooms")
        assert body["rooms"] == [
            {"room": "lobby", "members": 2},
            {"room": "n1-only", "members": 1},
            {"room": "n2-only", "members": 1},
        ]
        status, body = await call(node, "GET", "/api/rooms/lobby/members")
        assert sorted(m["userId"] for m in body["members"]) == sorted([a["userId"], b["userId"]])
    # a notice through n1 reaches the members on both nodes
    status, body = await call(n1, "POST", "/api/rooms/lobby/notice", {"text": "hello all"})
    assert status == 200 and body["members"] == 2
    for ws in (alice, bob, bob_n1):
        assert (await recv_type(ws, "chat"))["id"] == body["id"]
    # a disconnect through n1 of bob's connection on n2 travels there: 202, then 4001
    bob_conn = next(iter(n2.app[HUB].clients))
    status, body = await call(n1, "POST", f"/api/connections/{bob_conn}/disconnect")
    assert (status, body) == (202, {"status": "sent"})
    assert await expect_close(bob) == 4001
    # a node nobody knows: 404
    status, body = await call(n1, "POST", "/api/connections/n9%2F1/disconnect")
    assert (status, body["error"]) == (404, "not_found")
    for ws in (alice, bob_n1):
        await ws.close()


@pytest.mark.redis
async def test_every_route_answers_503_while_redis_is_down_then_recovers(
    redis_server: RedisServer, make_chat: MakeChat
) -> None:
    n1, n2 = await nodes(make_chat, redis_server, "n1", "n2", api_key=KEY)
    redis_server.kill()
    await until_ready(n1, False)
    for method, path, body in [
        *[r for r in ROUTES if "openapi" not in r[1] and "disconnect" not in r[1]],
        ("POST", "/api/connections/n2%2F1/disconnect", None),  # on the other node
    ]:
        status, answer = await call(n1, method, path, body)
        assert (status, answer["error"]) == (503, "unavailable"), (method, path, answer)
        assert answer["message"]
    assert (await call(n1, "GET", "/api/openapi.json"))[0] == 200  # nothing to ask Redis
    redis_server.start()
    await until_ready(n1, True)
    status, body = await call(n1, "POST", "/api/rooms/lobby/messages", {"text": "back"})
    assert status == 201
    assert n2.app[BROKER].kind == "redis"


# --- the README's examples, as written -------------------------------------------------------


def readme_commands() -> list[str]:
    """The shell commands of README.md's "Server API" section (continuations joined)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Server API", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("curl "):
                commands.append(line.split(" #", 1)[0].strip())
    return commands


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_the_readme_examples_run_as_written_against_a_real_process() -> None:
    commands = readme_commands()
    paths = {re.search(r"localhost:8080(/api/[^\s'\"]*)", c)[1] for c in commands}  # type: ignore[index]
    assert len(paths) >= 7, paths  # one example per route at least
    node = await Node.start(env={"GOCHAT_API_KEY": KEY, "GOCHAT_RATE": "0"})
    try:
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(f"{node.url}/ws?name=reader")
        await ws.send_json({"type": "join", "room": "lobby"})
        await recv_type(ws, "joined")
        outputs = []
        for command in commands:
            proc = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                command.replace("localhost:8080", f"127.0.0.1:{node.port}"),
                env={**os.environ, "GOCHAT_API_KEY": KEY},
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
            assert proc.returncode == 0, command
            outputs.append(json.loads(out))
        by_key = {k for out in outputs for k in out}
        assert {"id", "rooms", "members", "messages", "openapi"} <= by_key, outputs
        # the one refusal: the disconnect of an id that is not connected (see the console)
        errors = [out for out in outputs if "error" in out]
        assert [e["error"] for e in errors] == ["not_found"], errors
        assert (await recv_type(ws, "chat"))["via"] == "api"  # the posted message arrived
        await ws.close()
        await session.close()
    finally:
        await node.stop()
