"""The operations console probed from outside, over real sockets, against a real gochat
process: a parallel burst of logins, credentials with bytes that cannot be decoded, and the
event stream as Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from gochat.console.auth import MAX_FAILURES
from gochat.console.keys import CONSOLE
from gochat.console.state import FEED_SIZE

from .conftest import MakeChat
from .console import BEARER, TOKEN
from .procs import Node
from .util import TIMEOUT, parse_http_response, recv_type, until

SSE = {**BEARER, "Accept": "text/event-stream"}


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    """A gochat process with the test admin token; pings (and SSE keep-alives) every 0.5 s."""
    started = await Node.start(
        env={"GOCHAT_ADMIN_TOKEN": TOKEN, "GOCHAT_HEARTBEAT": "0.5", "GOCHAT_SHUTDOWN_GRACE": "3"}
    )
    try:
        yield started
    finally:
        await started.kill()


# --- raw HTTP -------------------------------------------------------------------------------


async def read_response(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, str], bytes]:
    """The final response on a `Connection: close` socket (an interim 100 skipped)."""
    async with asyncio.timeout(TIMEOUT):
        return parse_http_response(await reader.read())


async def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request exactly as given (any bytes in its headers and body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


def request(
    method: str,
    path: str,
    headers: dict[str, bytes] | None = None,
    body: bytes = b"",
    length: int | None = None,
) -> bytes:
    """The request's bytes; `length`: a Content-Length for a body sent later."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
    for name, value in (headers or {}).items():
        head += name.encode() + b": " + value + b"\r\n"
    if body or method == "POST":
        head += b"Content-Length: %d\r\n" % (len(body) if length is None else length)
    return head + b"\r\n" + body


FORM = b"application/x-www-form-urlencoded"


class HeldLogin:
    """A login POST whose body is held back: with `Expect: 100-continue` aiohttp answers
    `100 Continue` and runs the handler up to its first wait for the body in one step, so
    once the 100 is read the throttle has seen this attempt, and nothing of its body yet."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes):
        self.reader, self.writer, self.body = reader, writer, body

    @classmethod
    async def open(cls, port: int, token: str) -> HeldLogin:
        body = urlencode({"token": token}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        headers = {"Content-Type": FORM, "Expect": b"100-continue"}
        writer.write(request("POST", "/admin/login", headers, length=len(body)))
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        return cls(reader, writer, body)

    async def finish(self) -> tuple[int, dict[str, str], bytes]:
        try:
            self.writer.write(self.body)  # refused ones read and drop it (aiohttp lingers)
            await self.writer.drain()
            return await read_response(self.reader)
        finally:
            self.writer.close()


# --- 1. the login throttle under a parallel burst -------------------------------------------


async def test_parallel_login_burst_gets_no_more_evaluations_than_the_limit(node: Node) -> None:
    """All attempts are in flight at once (each has passed the throttle's check and waits for
    its body) before any body is sent: only MAX_FAILURES of them are evaluated, the rest and
    a right token sent last get 429 with Retry-After; right tokens do not use up a slot."""
    # right tokens, in flight together: each is counted while it waits, given back when right
    rights = [await HeldLogin.open(node.port, TOKEN) for _ in range(MAX_FAILURES - 1)]
    results = await asyncio.gather(*(held.finish() for held in rights))
    assert [status for status, _, _ in results] == [303] * (MAX_FAILURES - 1)

    wrongs = [await HeldLogin.open(node.port, f"guess-{n}") for n in range(300)]
    last = await HeldLogin.open(node.port, TOKEN)  # the right token, after the burst
    results = await asyncio.gather(*(held.finish() for held in [*wrongs, last]))
    statuses = [status for status, _, _ in results]
    assert statuses.count(401) == MAX_FAILURES, sorted(set(statuses))
    assert statuses.count(429) == len(statuses) - MAX_FAILURES
    assert statuses[-1] == 429  # the right token sent last does not get in
    for status, headers, _ in results:
        if status == 429:
            assert int(headers["retry-after"]) > 0
    async with aiohttp.ClientSession() as session:
        refused = await session.get(node.url + "/admin/api/snapshot", headers=BEARER)
        assert refused.status == 429 and int(refused.headers["Retry-After"]) > 0
    code, err = await node.stop()
    assert code == 0 and "Traceback" not in err
    assert err.count("console: failed login") == MAX_FAILURES


# --- 2. credentials with bytes that cannot be decoded ---------------------------------------


async def test_undecodable_credentials_are_refused_counted_and_logged_once(node: Node) -> None:
    # an operator logged in: a CSRF token that cannot be decoded is a plain 403, and a form
    # that cannot be decoded a 400 (neither counted: the session is good)
    login = await raw(
        node.port,
        request("POST", "/admin/login", {"Content-Type": FORM}, f"token={TOKEN}".encode()),
    )
    assert login[0] == 303
    cookie = login[1]["set-cookie"].split(";", 1)[0].encode()
    notice = request(
        "POST",
        "/admin/api/notice",
        {"Cookie": cookie, "Content-Type": b"application/json", "X-CSRF-Token": b"\xff\xfe"},
        b'{"room": "lobby", "text": "hi"}',
    )
    assert (await raw(node.port, notice))[0] == 403
    form = request("POST", "/admin/api/notice", {"Cookie": cookie, "Content-Type": FORM}, b"\xff")
    assert (await raw(node.port, form))[0] == 400

    # each of these is a failed attempt: MAX_FAILURES of them, and the address is throttled
    status, _, body = await raw(
        node.port, request("GET", "/admin/api/snapshot", {"Authorization": b"Bearer \xff\xfe"})
    )
    assert (status, body) == (401, b"unauthorized")
    status, headers, _ = await raw(
        node.port, request("GET", "/admin/api/snapshot", {"Cookie": b"gochat_admin=v1.\xff.1.x"})
    )
    assert status == 401 and headers["set-cookie"].startswith("gochat_admin=")  # cleared
    bad_utf8 = request("POST", "/admin/login", {"Content-Type": FORM}, b"token=\xff\xfe")
    assert (await raw(node.port, bad_utf8))[0] == 400
    bad_charset = request(
        "POST", "/admin/login", {"Content-Type": FORM + b"; charset=no-such"}, b"token=x"
    )
    assert (await raw(node.port, bad_charset))[0] == 400
    status, _, _ = await raw(
        node.port, request("GET", "/metrics", {"Authorization": b"Bearer \xc0\x80"})
    )
    assert status == 401
    status, headers, _ = await raw(
        node.port,
        request("GET", "/admin/api/snapshot", {"Authorization": b"Bearer " + TOKEN.encode()}),
    )
    assert status == 429 and int(headers["retry-after"]) > 0

    code, err = await node.stop()
    assert code == 0
    assert "ERROR" not in err and "Traceback" not in err, err
    # one WARNING line per undecodable request (the operator's form included)
    warnings = [line for line in err.splitlines() if "undecodable" in line]
    assert len(warnings) == MAX_FAILURES + 1, warnings
    assert all(" WARNING " in line for line in warnings), warnings


# --- 3. the event stream as Server-Sent Events ----------------------------------------------


async def next_event(content: aiohttp.StreamReader) -> tuple[str, Any]:
    """The next SSE block: ("comment", text), or (event name, its one data line as JSON)."""
    async with asyncio.timeout(TIMEOUT):
        block = (await content.readuntil(b"\n\n")).decode()
    assert block.endswith("\n\n"), repr(block)  # not the end of the stream
    lines = block.rstrip("\n").split("\n")
    if lines[0].startswith(":"):
        assert len(lines) == 1, lines
        return "comment", lines[0][1:].strip()
    name = "message"
    if lines[0].startswith("event: "):
        name = lines.pop(0).removeprefix("event: ")
    assert len(lines) == 1 and lines[0].startswith("data: "), lines  # one data line
    return name, json.loads(lines[0].removeprefix("data: "))


async def test_event_stream_as_server_sent_events(node: Node) -> None:
    async with aiohttp.ClientSession() as session:
        url = node.url + "/admin/events"
        accept = {"Accept": "text/event-stream"}
        assert (await session.get(url, headers=accept)).status == 401
        cross = await session.get(url, headers={**SSE, "Origin": "http://evil.example"})
        assert cross.status == 403

        stream = await session.get(
            url, headers=SSE, params={"room": "lobby", "kinds": "JOIN,PUBLISH"}
        )
        assert stream.status == 200, await stream.text()
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert stream.headers["Cache-Control"] == "no-store"
        name, hello = await next_event(stream.content)
        assert name == "hello" and hello["type"] == "hello" and "PUBLISH" in hello["kinds"]

        chat = await session.ws_connect(node.url.replace("http", "ws") + "/ws?name=alice")
        assert (await recv_type(chat, "welcome"))["userId"]
        for room in ("side", "lobby"):  # the filtered-out room first: its lines would come first
            await chat.send_json({"type": "join", "room": room})
            await recv_type(chat, "joined")
            await chat.send_json({"type": "chat", "room": room, "text": f"hi {room}"})
            await recv_type(chat, "chat")

        seen: list[dict[str, Any]] = []
        comments = 0
        async with asyncio.timeout(TIMEOUT):
            while not (comments and any(e["kind"] == "PUBLISH" for e in seen)):
                name, data = await next_event(stream.content)
                if name == "comment":
                    comments += 1  # the keep-alive, every GOCHAT_HEARTBEAT
                else:
                    assert name == "message", (name, data)
                    seen.append(data)
        assert [e["kind"] for e in seen] == ["JOIN", "PUBLISH"]
        assert all(e["room"] == "lobby" and e["node"] == hello["node"] for e in seen), seen
        assert '"PUBLISH" "gochat:room:lobby"' in seen[1]["line"] and "hi lobby" in seen[1]["line"]

        # shutdown: a last `close` event (1001), then the end of the stream; a clean exit
        node.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            while (event := await next_event(stream.content))[0] == "comment":
                pass
            assert event == ("close", {"code": 1001, "reason": "server shutting down"})
            assert await stream.content.read() == b""
        await chat.close()
    code, err = await node.stop(sig=None)
    assert code == 0 and "Traceback" not in err, err


async def test_server_sent_events_share_the_bounded_drop_oldest_feed(make_chat: MakeChat) -> None:
    chat = await make_chat(admin_token=TOKEN)
    console = chat.app[CONSOLE]
    stream = await chat.get("/admin/events", headers=SSE)
    assert stream.status == 200
    assert (await next_event(stream.content))[0] == "hello"
    (viewer,) = console.viewers
    extra = 7
    for n in range(FEED_SIZE + extra):  # all before the stream's task runs again
        viewer.feed.push({"kind": "PUBLISH", "line": f"line {n}"})
    assert await next_event(stream.content) == ("dropped", {"dropped": extra})
    lines = [(await next_event(stream.content))[1]["line"] for _ in range(FEED_SIZE)]
    assert lines == [f"line {n}" for n in range(extra, FEED_SIZE + extra)]

    # the stream's filter comes from the query, as the WebSocket's first `filter` would
    ws_viewers = len(console.viewers)
    ws = await chat.ws_connect("/admin/events", headers=BEARER, params={"user": "bob"})
    await recv_type(ws, "hello")
    await until(lambda: len(console.viewers) == ws_viewers + 1, what="the WebSocket viewer")
    (ws_viewer,) = [v for v in console.viewers if v is not viewer]
    assert ws_viewer.filter.user == "bob"

    await asyncio.wait_for(console.close_viewers(), TIMEOUT)
    assert await next_event(stream.content) == (
        "close",
        {"code": 1001, "reason": "server shutting down"},
    )
    assert await stream.content.read() == b""
    await until(lambda: not console.viewers, what="viewers gone")


async def test_an_action_form_not_in_its_charset_is_a_400(node: Node) -> None:
    """An operator's (bearer) action posted as a form that is not in its charset: 400 and
    one line, never a 500 with a traceback."""
    for content_type, body in (
        (FORM + b"; charset=utf-8", b"room=lobby&text=\xff\xfe"),
        (FORM + b"; charset=no-such-charset", b"room=lobby&text=hi"),
    ):
        headers = {"Authorization": BEARER["Authorization"].encode(), "Content-Type": content_type}
        status, _, _ = await raw(node.port, request("POST", "/admin/api/notice", headers, body))
        assert status == 400, (content_type, status)
    status, _, _ = await raw(node.port, request("GET", "/healthz"))
    assert status == 200
