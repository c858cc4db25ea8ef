"""The Python client library (gochat.client) against real servers: confirmations, refusals,
reconnects across restarts with nothing lost, and a chat resent after a drop published once.

The drops are real: a node stopped and started again, or a TCP proxy of the test's own that
cuts the client's side of a connection at a chosen moment (holding what was in flight)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gochat.chat.auth import mint
from gochat.client import (
    FINAL_CLOSE_CODES,
    Backoff,
    Chat,
    Client,
    ConnectError,
    ConnectionClosed,
    Error,
    Event,
    Joined,
    Left,
    Member,
    Presence,
    Reconnecting,
    Refused,
    Unknown,
    Welcome,
    parse_frame,
    ws_url,
)
from gochat.protocol import CloseCode

from .conftest import MakeChat
from .procs import Node
from .redis_server import RedisServer
from .util import TIMEOUT, until

FAST = Backoff(first=0.05, cap=0.2)  # reconnect within a fraction of a second in tests


def url_of(chat: Any) -> str:
    return str(chat.make_url("/"))


async def next_event(
    client: Client, match: Callable[[Event], bool], timeout: float = TIMEOUT
) -> Event:
    """Skip events until one matches; fail after `timeout`."""
    async with asyncio.timeout(timeout):
        while True:
            event = await client.receive()
            if match(event):
                return event


async def events_until(client: Client, last: Callable[[Event], bool]) -> list[Event]:
    """Every event up to and including the first for which `last` is true."""
    seen: list[Event] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            seen.append(await client.receive())
            if last(seen[-1]):
                return seen


def chat_with_id(chat_id: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, Chat) and e.id == chat_id


def texts(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, Chat)]


# --- no server needed -------------------------------------------------------------------


def test_server_urls_map_to_the_websocket_endpoint() -> None:
    assert str(ws_url("http://localhost:8080")) == "ws://localhost:8080/ws"
    assert str(ws_url("https://chat.example.com/")) == "wss://chat.example.com/ws"
    assert str(ws_url("https://example.com/chat")) == "wss://example.com/chat/ws"
    assert str(ws_url("ws://127.0.0.1:9000/ws")) == "ws://127.0.0.1:9000/ws"
    assert str(ws_url("localhost:8080")) == "ws://localhost:8080/ws"
    with pytest.raises(ValueError):
        ws_url("ftp://example.com")


def test_frames_are_typed_unknown_fields_ignored_unknown_types_kept() -> None:
    chat = parse_frame(
        {
            "type": "chat",
            "id": "1-0",
            "room": "r",
            "userId": "u",
            "name": "n",
            "text": "t",
            "ts": 5,
            "cid": "c",
            "newField": [1, 2],
        }
    )
    assert chat == Chat("1-0", "r", "u", "n", "t", 5, "c")
    joined = parse_frame(
        {
            "type": "joined",
            "room": "r",
            "members": [{"userId": "u", "name": "n", "extra": 1}],
            "history": [],
            "recovered": False,
        }
    )
    assert joined == Joined("r", (Member("u", "n"),), (), False)
    assert isinstance(joined, Joined) and joined.incomplete
    assert parse_frame(
        {"type": "presence", "userId": "u", "name": "n", "room": "r", "status": "online"}
    ) == Presence("u", "n", "r", "online")
    assert parse_frame({"type": "error", "code": "too_long", "message": "m", "ref": "c"}) == Error(
        "too_long", "m", "c"
    )
    assert parse_frame({"type": "typing", "room": "r"}) == Unknown(
        "typing", {"type": "typing", "room": "r"}
    )
    assert isinstance(parse_frame({"type": "chat", "room": "r"}), Unknown)  # fields missing


def test_the_client_does_not_reconnect_after_policy_or_kick_but_does_after_the_rest() -> None:
    assert {CloseCode.POLICY, CloseCode.KICKED} <= FINAL_CLOSE_CODES
    for code in (CloseCode.GOING_AWAY, CloseCode.INTERNAL, CloseCode.TRY_AGAIN, 1006):
        assert code not in FINAL_CLOSE_CODES


def test_uid_is_made_once_per_client_and_checked() -> None:
    client = Client("http://localhost:1")
    assert client.uid is not None and 8 <= len(client.uid) <= 64
    assert Client("http://localhost:1", uid="abcdefgh_1").uid == "abcdefgh_1"
    assert Client("http://localhost:1", token="t").uid is None
    with pytest.raises(ValueError):
        Client("http://localhost:1", uid="short")


# --- against an in-process server -----------------------------------------------------


@pytest.fixture
async def pair(make_chat: MakeChat) -> AsyncIterator[tuple[Any, Client, Client]]:
    """A server, and alice and bob both in room `r`."""
    server = await make_chat()
    alice = Client(url_of(server), name="alice", backoff=FAST)
    bob = Client(url_of(server), name="bob", backoff=FAST)
    await alice.connect()
    await bob.connect()
    await alice.join("r")
    await bob.join("r")
    yield server, alice, bob
    await alice.close()
    await bob.close()


async def test_send_returns_the_confirmed_chat(pair: tuple[Any, Client, Client]) -> None:
    _, alice, bob = pair
    chat = await alice.send("r", "hello")
    assert (chat.room, chat.text, chat.name, chat.user_id) == ("r", "hello", "alice", alice.user_id)
    assert chat.cid and chat.id
    seen = await next_event(bob, lambda e: isinstance(e, Chat))
    assert seen == chat  # the same message, id and ts included, for everyone
    mine = await events_until(alice, chat_with_id(chat.id))
    assert texts(mine) == ["hello"]  # the sender's own copy comes through the events too
    assert alice.last_id("r") == chat.id and alice.unconfirmed == 0


async def test_anonymous_identity_is_the_uid(make_chat: MakeChat) -> None:
    server = await make_chat()
    async with Client(url_of(server), name="carol", uid="carol-uid-1234") as carol:
        assert carol.welcome is not None
        assert carol.welcome.user_id == "carol-uid-1234"
        assert carol.welcome.name == "carol"


async def test_refused_sends_raise_with_the_code(make_chat: MakeChat) -> None:
    server = await make_chat(max_text=10)
    async with Client(url_of(server), name="dave") as dave:
        await dave.join("r")
        with pytest.raises(Refused) as too_long:
            await dave.send("r", "x" * 11)
        assert too_long.value.code == "too_long"
        with pytest.raises(Refused) as elsewhere:
            await dave.send("other", "hi", cid="my-cid-1")
        assert (elsewhere.value.code, elsewhere.value.ref) == ("not_in_room", "my-cid-1")
        with pytest.raises(Refused) as bad_room:
            await dave.join("no spaces")
        assert bad_room.value.code == "bad_room"
        assert dave.rooms == {"r"}
        assert (await dave.send("r", "fits")).text == "fits"  # still connected, still in r


async def test_a_send_over_the_rate_raises_rate_limited(make_chat: MakeChat) -> None:
    server = await make_chat(rate=1)  # burst 2: the join takes one
    async with Client(url_of(server), name="eve") as eve:
        await eve.join("r")
        results = await asyncio.gather(
            *(eve.send("r", f"m{i}") for i in range(6)), return_exceptions=True
        )
    refused = [r for r in results if isinstance(r, Refused)]
    sent = [r for r in results if isinstance(r, Chat)]
    assert sent and refused, results
    assert {r.code for r in refused} == {"rate_limited"}
    assert all(r.ref and r.ref.startswith(eve._cid_prefix) for r in refused)


async def test_closed_for_good_after_policy_close_no_reconnect(make_chat: MakeChat) -> None:
    """A token that expires mid-session: close 1008, which the client does not retry."""
    secret = "s" * 32
    server = await make_chat(auth_secret=secret)
    client = Client(url_of(server), token=mint(secret, "frank", ttl=1), backoff=FAST)
    welcome = await client.connect()
    assert welcome.user_id == "frank"
    await client.join("r")
    events: list[Event] = []
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(TIMEOUT):
            async for event in client:
                events.append(event)
    assert closed.value.code == 1008, closed.value
    assert not [e for e in events if isinstance(e, Reconnecting)], events
    with pytest.raises(ConnectionClosed):
        await client.send("r", "too late")
    await client.close()


async def test_a_first_connect_that_fails_raises_connect_error(make_chat: MakeChat) -> None:
    server = await make_chat(auth_secret="s" * 32)
    with pytest.raises(ConnectError) as refused:
        await Client(url_of(server), token="not-a-jwt").connect()
    assert refused.value.status == 401


# --- restarts: a real process on a fixed port ---------------------------------------------


@pytest.mark.slow
async def test_incomplete_recovery_is_surfaced_and_the_uid_kept() -> None:
    """An in-memory node restarted: the rejoin's `since` means nothing to the new process,
    so its `joined` says recovered: false, which the client passes on (`incomplete`)."""
    env = {"GOCHAT_ADMIN_TOKEN": "t" * 32}
    node = await Node.start(env=env)
    client = Client(node.url, name="gina", backoff=FAST)
    try:
        first = await client.connect()
        await client.join("r")
        said = await client.send("r", "before the restart")
        assert client.last_id("r") == said.id
        await node.stop()
        drop = await next_event(client, lambda e: isinstance(e, Reconnecting))
        assert isinstance(drop, Reconnecting) and drop.code == 1001, drop
        node = await Node.start(env=env, port=node.port)
        rejoined = await next_event(client, lambda e: isinstance(e, Joined))
        assert isinstance(rejoined, Joined)
        assert rejoined.rejoin and rejoined.recovered is False and rejoined.incomplete
        assert client.welcome is not None and client.welcome.user_id == first.user_id
        assert first.user_id == client.uid
        assert (await client.send("r", "after")).text == "after"
    finally:
        await client.close()
        await node.stop()


@pytest.mark.redis
@pytest.mark.slow
async def test_reconnect_across_a_restart_loses_nothing_and_sends_once(
    redis_server: RedisServer,
) -> None:
    """Two nodes on one Redis. Node A stops: its client keeps trying; meanwhile a user on
    node B talks, and A's client sends a message of its own. A comes back on its port: the
    client rejoins with `since`, gets what B's user said, and its message goes out once."""
    env = {"REDIS_URL": redis_server.url, "GOCHAT_ADMIN_TOKEN": "t" * 32}
    a = await Node.start(env=env)
    b = await Node.start(env=env)
    hana = Client(a.url, name="hana", backoff=FAST)
    ivan = Client(b.url, name="ivan", backoff=FAST)
    try:
        await hana.connect()
        await ivan.connect()
        await hana.join("r")
        await ivan.join("r")
        before = await ivan.send("r", "before")
        await next_event(hana, chat_with_id(before.id))

        await a.stop()
        drop = await next_event(hana, lambda e: isinstance(e, Reconnecting))
        assert isinstance(drop, Reconnecting) and drop.code == 1001, drop
        gap = [await ivan.send("r", f"gap-{i}") for i in range(3)]
        mine = asyncio.create_task(hana.send("r", "from hana, sent while down"))
        await until(lambda: hana.unconfirmed == 1, what="hana's send queued")
        assert not mine.done()

        a = await Node.start(env=env, port=a.port)
        sent = await asyncio.wait_for(mine, TIMEOUT)
        after = await hana.send("r", "after")
        seen = await events_until(hana, chat_with_id(after.id))
        rejoined = [e for e in seen if isinstance(e, Joined)]
        assert len(rejoined) == 1 and rejoined[0].rejoin and rejoined[0].recovered is True
        assert [c.id for c in rejoined[0].history] == [c.id for c in gap]
        assert texts(seen) == ["gap-0", "gap-1", "gap-2", "from hana, sent while down", "after"]

        heard = await events_until(ivan, chat_with_id(after.id))
        assert [e.id for e in heard if isinstance(e, Chat) and e.cid == sent.cid] == [sent.id]
    finally:
        await hana.close()
        await ivan.close()
        await a.stop()
        await b.stop()


# --- a chat in flight when the connection drops ------------------------------------------


class Pipe:
    """One proxied TCP connection; each direction can be held, and the client's side cut
    while the server's side stays open."""

    def __init__(
        self,
        down: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.down_r, self.down_w = down
        self.up_r, self.up_w = up
        self.hold_up = False  # client -> server bytes kept in `held_up`
        self.hold_down = False  # server -> client bytes not passed on
        self.held_up = bytearray()
        self.from_server = bytearray()
        self.cut = False
        self.tasks = [asyncio.create_task(self._up()), asyncio.create_task(self._down())]

    async def _up(self) -> None:
        try:
            while data := await self.down_r.read(65536):
                if self.hold_up:
                    self.held_up += data
                else:
                    self.up_w.write(data)
        except OSError:
            pass
        if not self.cut:
            self.up_w.close()

    async def _down(self) -> None:
        try:
            while data := await self.up_r.read(65536):
                self.from_server += data
                if not (self.hold_down or self.cut):
                    self.down_w.write(data)
        except OSError:
            pass
        if not self.cut:
            self.down_w.close()

    def cut_client(self) -> None:
        """The client's connection drops (no close frame); the server's stays open."""
        self.cut = True
        self.down_w.transport.abort()

    def release_up(self) -> None:
        """What the client sent while held reaches the server now, late."""
        self.hold_up = False
        self.up_w.write(bytes(self.held_up))
        self.held_up.clear()

    async def close(self) -> None:
        self.down_w.transport.abort()
        self.up_w.transport.abort()
        await asyncio.wait(self.tasks)


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.pipes: list[Pipe] = []
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.pipes.append(Pipe((reader, writer), up))

    async def close(self) -> None:
        self.server.close()
        for pipe in self.pipes:
            await pipe.close()
        await self.server.wait_closed()


@asynccontextmanager
async def proxied_clients(server: Any) -> AsyncIterator[tuple[Proxy, Client, Client]]:
    """alice through a proxy, bob straight to `server`, both in room `r`; bob has said
    something alice saw, so her rejoin carries `since`."""
    assert server.port is not None
    proxy = Proxy(server.port)
    await proxy.start()
    alice = Client(proxy.url, name="alice", backoff=FAST)
    bob = Client(url_of(server), name="bob", backoff=FAST)
    try:
        await alice.connect()
        await bob.connect()
        await alice.join("r")
        await bob.join("r")
        first = await bob.send("r", "first")
        await next_event(alice, chat_with_id(first.id))
        await next_event(bob, chat_with_id(first.id))
        assert len(proxy.pipes) == 1
        yield proxy, alice, bob
    finally:
        await alice.close()
        await bob.close()
        await proxy.close()


@pytest.fixture
async def proxied(make_chat: MakeChat) -> AsyncIterator[tuple[Proxy, Client, Client]]:
    async with proxied_clients(await make_chat()) as clients:
        yield clients


async def test_a_chat_whose_answer_was_lost_is_confirmed_by_the_rejoin_history(
    proxied: tuple[Proxy, Client, Client],
) -> None:
    """Published, but the confirmation never reached the client: the rejoin's history holds
    its cid from this user, so it is confirmed from there and not sent again."""
    proxy, alice, bob = proxied
    pipe = proxy.pipes[0]
    pipe.hold_down = True
    sending = asyncio.create_task(alice.send("r", "answer lost"))
    published = await next_event(bob, lambda e: isinstance(e, Chat) and e.text == "answer lost")
    assert not sending.done()
    pipe.cut_client()
    confirmed = await asyncio.wait_for(sending, TIMEOUT)
    assert confirmed == published
    assert len(proxy.pipes) == 2  # it did reconnect
    # had it been sent again, it would come before this one (one connection, in order)
    after = await alice.send("r", "after")
    heard = await events_until(bob, chat_with_id(after.id))
    assert texts(heard) == ["after"]  # bob had "answer lost" already; no second copy
    mine = await events_until(alice, chat_with_id(after.id))
    rejoined = [e for e in mine if isinstance(e, Joined)]
    assert rejoined and rejoined[0].rejoin and rejoined[0].recovered is True
    assert texts(mine) == ["answer lost", "after"]


async def test_a_chat_sent_again_after_a_drop_is_published_once(
    proxied: tuple[Proxy, Client, Client],
) -> None:
    await check_published_once(*proxied)


@pytest.mark.redis
async def test_a_chat_sent_again_after_a_drop_is_published_once_through_redis(
    redis_server: RedisServer, make_chat: MakeChat
) -> None:
    async with proxied_clients(await make_chat(redis_url=redis_server.url)) as clients:
        await check_published_once(*clients)


async def check_published_once(proxy: Proxy, alice: Client, bob: Client) -> None:
    """The chat's frame is stuck on the old connection when it drops. The client rejoins
    (the history has no such cid) and sends it again, same cid; then the old copy reaches
    the server too. The server must not publish that cid from this user a second time:
    exactly once, which needs the server's cid dedupe."""
    pipe = proxy.pipes[0]
    pipe.hold_up = True
    sending = asyncio.create_task(alice.send("r", "exactly once"))
    await until(lambda: len(pipe.held_up) > 0, what="the chat frame held in the proxy")
    pipe.cut_client()
    sent = await asyncio.wait_for(sending, TIMEOUT)
    assert sent.cid is not None
    cid = sent.cid.encode()
    pipe.release_up()
    # the old connection hears of the cid twice: the resend's delivery, then the answer to
    # its own late copy (the original, to it alone; or, without dedupe, a second delivery)
    await until(
        lambda: pipe.from_server.count(cid) >= 2,
        what="the late copy answered",
    )
    after = await alice.send("r", "after")
    heard = await events_until(bob, chat_with_id(after.id))
    assert texts(heard) == ["exactly once", "after"], heard


async def test_leave_ends_the_rejoin_and_left_rooms_stay_left(
    proxied: tuple[Proxy, Client, Client],
) -> None:
    proxy, alice, _ = proxied
    await alice.join("s")
    await alice.leave("s")
    assert alice.rooms == {"r"}
    proxy.pipes[0].cut_client()
    rejoined = await next_event(alice, lambda e: isinstance(e, Joined) and e.rejoin)
    assert isinstance(rejoined, Joined) and rejoined.room == "r"
    back = await alice.send("r", "back")
    with pytest.raises(Refused) as gone:
        await alice.send("s", "not in s")
    assert gone.value.code == "not_in_room"
    later = await events_until(alice, chat_with_id(back.id))
    assert not [e for e in later if isinstance(e, (Joined, Left)) and e.room == "s"], later


async def test_welcome_is_an_event_and_reconnects_are_reported(
    proxied: tuple[Proxy, Client, Client],
) -> None:
    proxy, alice, _ = proxied
    proxy.pipes[0].cut_client()
    drop = await next_event(alice, lambda e: isinstance(e, Reconnecting))
    assert isinstance(drop, Reconnecting) and drop.attempt >= 1 and drop.delay <= FAST.cap
    welcome = await next_event(alice, lambda e: isinstance(e, Welcome))
    assert isinstance(welcome, Welcome) and welcome.user_id == alice.user_id
