"""Hardening (issue 6): timeouts, limits at the handshake, slow and dead peers, hostile
paths and headers, log injection, shutdown in batches.

Cases proven elsewhere (contract errors and close codes, fuzzing, churn, SIGTERM, Redis)
are listed with their tests in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

import gochat.app
import gochat.assets
from gochat.__main__ import main as cli
from gochat.assets import asset_dir
from gochat.chat.auth import verify
from gochat.config import OPTIONS
from gochat.events import LOG_ARG
from gochat.keys import FIRST_FRAME, HUB

from .conftest import MakeChat
from .console import BEARER, TOKEN
from .rawws import RawWS
from .util import anon, connect, join, parse_http_response, recv, recv_type, uid_of, until


def server_client(chat: TestClient[Any, Any], user_id: str) -> Any:
    """The Hub's Client of the anonymous user `user_id` (exactly one)."""
    (client,) = [c for c in chat.app[HUB].clients.values() if c.user_id == uid_of(user_id)]
    return client


def shrink_send_buffer(client: Any) -> Any:
    """Make the kernel keep at most a few KiB for this server-side socket, so unsent bytes
    pile up in the transport (where the rules look) after a few dozen KiB, not MiBs."""
    sock = client.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return sock


def raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one raw HTTP request (paths exactly as given, no client-side normalising)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return parse_http_response(data)


async def get_raw(
    chat: TestClient[Any, Any], path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n"
    return await asyncio.to_thread(raw_http, chat.port or 0, request.encode())


# --- handshake and first-frame timeout -----------------------------------------------------


async def test_silent_websocket_closed_1008_after_handshake_timeout(make_chat: MakeChat) -> None:
    chat = await make_chat(handshake_timeout=0.5)
    hub = chat.app[HUB]
    talker, _ = await connect(chat, "talker")
    await join(talker, "lobby")
    loop = asyncio.get_running_loop()
    silent = await chat.ws_connect("/ws", params=anon("silent"))
    opened = loop.time()
    assert (await recv(silent))["type"] == "welcome"
    msg = await silent.receive(timeout=5)
    elapsed = loop.time() - opened
    assert msg.type is aiohttp.WSMsgType.CLOSE, msg
    assert (msg.data, msg.extra) == (1008, "no frame within 0.5s")
    assert 0.45 <= elapsed < 2.0, elapsed
    await until(lambda: [c.name for c in hub.clients.values()] == ["talker"], what="forgotten")
    # a client that spoke in time keeps its connection past the timeout
    await talker.send_json({"type": "chat", "room": "lobby", "text": "still here"})
    assert (await recv_type(talker, "chat"))["text"] == "still here"


async def test_first_frame_timeout_outlives_a_departed_neighbour(make_chat: MakeChat) -> None:
    """One timer serves every connection's first-frame timeout: a connection that leaves
    is forgotten at once (not held until its deadline), and the one behind it is still
    closed on time."""
    chat = await make_chat(handshake_timeout=0.5)
    watch = chat.app[FIRST_FRAME]
    gone, _ = await connect(chat, "gone")
    loop = asyncio.get_running_loop()
    silent, _ = await connect(chat, "silent")
    opened = loop.time()
    assert len(watch) == 2
    await gone.close()
    await until(lambda: len(watch) == 1, what="the departed connection forgotten")
    msg = await silent.receive(timeout=5)
    elapsed = loop.time() - opened
    assert (msg.type, msg.data, msg.extra) == (
        aiohttp.WSMsgType.CLOSE,
        1008,
        "no frame within 0.5s",
    )
    assert 0.45 <= elapsed < 2.0, elapsed
    assert len(watch) == 0


def drip(port: int, first: bytes, limit: float) -> float:
    """A slowloris: connect, send `first` (maybe nothing), then one more header line every
    0.1 s, never ending the request. Seconds until the server hangs up."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(0.1)
        start = time.monotonic()
        if first:
            sock.sendall(first)
        while time.monotonic() - start < limit:
            try:
                if sock.recv(4096) == b"":
                    return time.monotonic() - start
            except TimeoutError:
                pass
            except ConnectionResetError:
                return time.monotonic() - start
            if first:
                try:
                    sock.sendall(b"X-Drip: 1\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    return time.monotonic() - start
    raise AssertionError(f"still connected after {limit}s")


@pytest.mark.parametrize(
    "first",
    [b"", b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"],
    ids=["says-nothing", "drips-headers"],
)
async def test_incomplete_http_request_dropped_after_handshake_timeout(
    make_chat: MakeChat, first: bytes
) -> None:
    chat = await make_chat(handshake_timeout=0.5)
    elapsed = await asyncio.to_thread(drip, chat.port or 0, first, 5.0)
    assert 0.45 <= elapsed < 2.0, elapsed
    assert (await chat.get("/healthz")).status == 200


# --- limits at the handshake ---------------------------------------------------------------


async def test_per_ip_cap_uses_forwarded_address_only_when_trusted(make_chat: MakeChat) -> None:
    untrusted = await make_chat(max_conn_per_ip=1)
    a = await untrusted.ws_connect("/ws", headers={"X-Forwarded-For": "203.0.113.1"})
    assert (await recv(a))["type"] == "welcome"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        # another claimed address, the same real peer: the header is not believed
        await untrusted.ws_connect("/ws", headers={"X-Forwarded-For": "203.0.113.2"})
    assert info.value.status == 429
    assert dict(untrusted.app[HUB].per_ip) == {"127.0.0.1": 1}

    trusted = await make_chat(max_conn_per_ip=1, trust_proxy=True)
    for ip in ("203.0.113.1", "203.0.113.2"):
        ws = await trusted.ws_connect("/ws", headers={"X-Forwarded-For": ip})
        assert (await recv(ws))["type"] == "welcome"
    assert dict(trusted.app[HUB].per_ip) == {"203.0.113.1": 1, "203.0.113.2": 1}
    # The router appends the peer it saw; whatever the client wrote is to the left of it.
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await trusted.ws_connect("/ws", headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.1"})
    assert info.value.status == 429
    spoofed = await trusted.ws_connect(
        "/ws", headers={"X-Forwarded-For": "203.0.113.1, 198.51.100.8"}
    )
    assert (await recv(spoofed))["type"] == "welcome"
    assert trusted.app[HUB].per_ip["198.51.100.8"] == 1


async def test_node_connection_cap_answers_503(make_chat: MakeChat) -> None:
    chat = await make_chat(max_connections=2)
    hub = chat.app[HUB]
    a, _ = await connect(chat, "a")
    await connect(chat, "b")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await chat.ws_connect("/ws", params=anon("c"))
    assert info.value.status == 503
    await a.close()
    await until(lambda: len(hub.clients) == 1, what="a to be forgotten")
    await connect(chat, "c")


async def test_oversized_frame_refused_from_its_header(make_chat: MakeChat) -> None:
    """1009 as soon as the header declares too much: the payload is never buffered."""
    chat = await make_chat(max_frame=1024)
    raw = await asyncio.to_thread(RawWS, "127.0.0.1", chat.port or 0, "/ws?name=big&uid=user-big")
    mask = os.urandom(4)
    declared = 64 * 1024 * 1024
    # the header of a 64 MiB text frame and its first 100 bytes; the rest never comes
    await asyncio.to_thread(
        raw.sock.sendall, struct.pack("!BBQ", 0x81, 0x80 | 127, declared) + mask + b"x" * 100
    )
    code, _ = await asyncio.to_thread(raw.read_until_close)
    assert code == 1009
    raw.close()


async def test_permessage_deflate_is_never_negotiated(chat: TestClient[Any, Any]) -> None:
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    raw = await asyncio.to_thread(
        RawWS, "127.0.0.1", chat.port or 0, "/ws?name=z&uid=user-z__", None, offer
    )
    assert raw.status == 101
    assert "sec-websocket-extensions" not in raw.head.lower()
    raw.close()


# --- slow and dead peers -------------------------------------------------------------------


async def test_peer_that_neither_reads_nor_pongs_is_aborted(make_chat: MakeChat) -> None:
    heartbeat, grace = 0.5, 1.0
    chat = await make_chat(heartbeat=heartbeat, shutdown_grace=grace)
    hub = chat.app[HUB]
    loop = asyncio.get_running_loop()
    watcher, _ = await connect(chat, "watcher")
    await join(watcher, "lobby")
    dead = await asyncio.to_thread(
        RawWS, "127.0.0.1", chat.port or 0, "/ws?name=dead&uid=user-dead", 4096
    )
    await asyncio.to_thread(dead.send_frame, b'{"type":"join","room":"lobby"}')
    last_heard = loop.time()  # nothing more comes from this peer: no frame, no pong
    online = await recv_type(watcher, "presence")
    assert (online["userId"], online["status"]) == (uid_of("dead"), "online")
    client = server_client(chat, "dead")
    transport = client.transport
    sock = shrink_send_buffer(client)
    for i in range(40):  # ~80 KB: far below the 1 MiB slow-consumer limit
        await watcher.send_json({"type": "chat", "room": "lobby", "text": f"{i}" + "z" * 2000})
    await until(lambda: transport.get_write_buffer_size() > 0, what="a backlog to the dead peer")

    offline = await recv_type(watcher, "presence", timeout=heartbeat * 1.5 + 2)
    assert (offline["userId"], offline["status"]) == (uid_of("dead"), "offline")
    assert "dead" not in {c.name for c in hub.clients.values()}
    bound = heartbeat * 1.75 + 0.5  # the heartbeat aborts it: no grace period to wait
    await until(lambda: sock.fileno() == -1, timeout=bound, what="the transport to be aborted")
    elapsed = loop.time() - last_heard
    assert heartbeat <= elapsed <= bound, elapsed
    assert transport.is_closing() and transport.get_write_buffer_size() == 0
    assert hub.stats.slow_consumer_closes == 0 and hub.stats.write_timeout_closes == 0
    dead.close()


async def test_trickle_reader_closed_1013_by_write_timeout(make_chat: MakeChat) -> None:
    """A peer that reads, but too slowly to ever drain its backlog, is closed after
    GOCHAT_WRITE_TIMEOUT although it stays far below the GOCHAT_SEND_BUFFER byte limit."""
    write_timeout = 1.0
    chat = await make_chat(write_timeout=write_timeout)
    hub = chat.app[HUB]
    loop = asyncio.get_running_loop()
    slow = await asyncio.to_thread(
        RawWS, "127.0.0.1", chat.port or 0, "/ws?name=slow&uid=user-slow", 4096
    )
    await asyncio.to_thread(slow.send_frame, b'{"type":"join","room":"lobby"}')
    await until(lambda: len(hub.rooms.get("lobby", ())) == 1, what="slow to join")
    transport = server_client(chat, "slow").transport
    shrink_send_buffer(server_client(chat, "slow"))
    fast, _ = await connect(chat, "fast")
    await join(fast, "lobby")

    stop = threading.Event()

    def trickle() -> None:  # ~12 KB/s: it makes progress, but never catches up
        while not stop.is_set():
            slow.buf += slow.sock.recv(256)
            stop.wait(0.02)

    reader = loop.run_in_executor(None, trickle)
    count = 100  # ~200 KB
    try:
        for i in range(count):
            await fast.send_json({"type": "chat", "room": "lobby", "text": f"{i} " + "t" * 2000})
        await until(lambda: transport.get_write_buffer_size() > 0, what="a backlog")
        backlog_seen = loop.time()
        await until(lambda: hub.stats.write_timeout_closes == 1, timeout=write_timeout + 3)
        elapsed = loop.time() - backlog_seen
    finally:
        stop.set()
        await reader
    code, _ = await asyncio.to_thread(slow.read_until_close)
    slow.close()
    assert code == 1013
    assert write_timeout - 0.3 <= elapsed <= write_timeout + 1.5, elapsed
    assert hub.stats.slow_consumer_closes == 0  # the byte limit was never reached
    # the reader that keeps up got everything and is still connected
    texts = [(await recv_type(fast, "chat"))["text"] for _ in range(count)]
    assert texts == [f"{i} " + "t" * 2000 for i in range(count)]
    assert "fast" in {c.name for c in hub.clients.values()}
    await until(lambda: hub.backlogged() == 0, what="the sweep to forget the slow peer")


# --- hostile paths and headers -------------------------------------------------------------

TRAVERSALS = [
    "/..%2f..%2fetc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/..\\..\\etc\\passwd",
    "/..%5c..%5cetc%5cpasswd",
    "/../pyproject.toml",
    "/.%2e/pyproject.toml",
    "/web/",
    "/web/app.js",
    "/gochat/app.py",
    "/app.js/",
    "/app.js%00.png",
    "/.hidden.js",
    "/%2e%2e",
]


async def test_static_traversal_answers_exactly_like_missing(chat: TestClient[Any, Any]) -> None:
    missing = await get_raw(chat, "/no-such-file.js")
    assert missing[0] == 404
    for path in TRAVERSALS:
        status, _, body = await get_raw(chat, path)
        assert (status, body) == (404, missing[2]), (path, status, body[:200])
    status, _, body = await get_raw(chat, "/app.js")
    assert status == 200 and body  # the real thing is still served


async def test_console_static_traversal_answers_like_missing(make_chat: MakeChat) -> None:
    chat = await make_chat(admin_token=TOKEN)
    missing = await get_raw(chat, "/admin/static/nope.js", BEARER)
    assert missing[0] == 404
    for path in (
        "/admin/static/",
        "/admin/static/..%2f..%2fgochat%2fapp.py",
        "/admin/static/%2e%2e/%2e%2e/pyproject.toml",
        "/admin/static/..\\..\\pyproject.toml",
        "/admin/static/console.js/",
        "/admin/static/../templates/console.html",
        "/admin/templates/console.html",
    ):
        status, _, body = await get_raw(chat, path, BEARER)
        assert (status, body) == (404, missing[2]), (path, status, body[:200])
    # and without credentials nothing but the login assets is served at all
    assert (await get_raw(chat, "/admin/static/console.js"))[0] == 401


async def test_symlinks_and_directories_in_the_web_root_are_not_served(
    make_chat: MakeChat, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "web"
    shutil.copytree(asset_dir("web"), root)
    secret = tmp_path / "secret.js"
    secret.write_text("secret")
    (root / "outside.js").symlink_to(secret)
    (root / "alias.js").symlink_to(root / "app.js")
    (root / "folder.js").mkdir()
    (root / "folder.js" / "index.html").write_text("index")
    real = gochat.assets.asset_dir
    monkeypatch.setattr(gochat.app, "asset_dir", lambda name: root if name == "web" else real(name))
    chat = await make_chat()
    missing = await get_raw(chat, "/no-such-file.js")
    for path in ("/outside.js", "/alias.js", "/folder.js", "/folder.js/", "/folder.js/index.html"):
        status, _, body = await get_raw(chat, path)
        assert (status, body) == (404, missing[2]), (path, status, body[:200])
    assert (await get_raw(chat, "/app.js"))[0] == 200  # served from the copy


PAGES = ["/", "/app.js", "/style.css", "/no-such-file.js", "/admin/login", "/admin/", "/healthz"]


@pytest.mark.parametrize("path", PAGES)
async def test_security_headers(make_chat: MakeChat, path: str) -> None:
    chat = await make_chat(admin_token=TOKEN)
    resp = await chat.get(path, headers=BEARER if path == "/admin/" else {})
    assert resp.status in (200, 404), resp.status
    csp = resp.headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "frame-ancestors 'none'", "object-src 'none'"):
        assert directive in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Frame-Options"] == "DENY"


async def test_console_login_refuses_cross_origin_posts(make_chat: MakeChat) -> None:
    chat = await make_chat(admin_token=TOKEN)
    cross = await chat.post(
        "/admin/login",
        data={"token": TOKEN},
        headers={"Origin": "http://evil.example"},
        allow_redirects=False,
    )
    assert cross.status == 403 and "gochat_admin" not in cross.cookies
    own = str(chat.make_url("")).rstrip("/")
    ok = await chat.post(
        "/admin/login", data={"token": TOKEN}, headers={"Origin": own}, allow_redirects=False
    )
    assert ok.status == 303


# --- client tokens -------------------------------------------------------------------------


def test_gochat_token_mints_a_token_the_server_accepts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "cli-secret-0123456789abcdef0123456789"
    monkeypatch.setenv("GOCHAT_AUTH_SECRET", secret)
    cli(["token", "u-7", "--name", "Ada", "--rooms", "lobby,ops", "--ttl", "60"])
    ident = verify(capsys.readouterr().out.strip(), secret)
    assert (ident.user_id, ident.name, ident.rooms) == ("u-7", "Ada", frozenset({"lobby", "ops"}))
    assert 50 < ident.expires - time.time() <= 60
    monkeypatch.delenv("GOCHAT_AUTH_SECRET")
    with pytest.raises(SystemExit) as exited:
        cli(["token", "u-7"])
    assert exited.value.code == 2


# --- log injection -------------------------------------------------------------------------

EVIL = "x\r\n2030-01-01 INFO gochat.admin: console: login from 10.0.0.1\x1b[2J\u202eexe.txt" + (
    "y" * 1000
)


async def test_user_data_in_log_lines_is_escaped_and_cut(
    make_chat: MakeChat, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gochat")
    chat = await make_chat(admin_token=TOKEN, trust_proxy=True)
    ws, _ = await connect(chat, "victim")
    await join(ws, "lobby")
    conn = server_client(chat, "victim").id
    kicked = await chat.post("/admin/api/kick", json={"conn": conn, "reason": EVIL}, headers=BEARER)
    assert kicked.status == 200
    # a notice is chat text: control and bidi characters are refused, long text is cut
    refused = await chat.post(
        "/admin/api/notice", json={"room": "lobby", "text": EVIL}, headers=BEARER
    )
    assert refused.status == 400 and (await refused.json())["error"] == "bad_message"
    notice = await chat.post(
        "/admin/api/notice", json={"room": "lobby", "text": "y" * 1000}, headers=BEARER
    )
    assert notice.status == 200
    # an address from X-Forwarded-For (trusted here) with a direction override in it
    body = b"token=wrong"
    request = (
        "POST /admin/login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        "X-Forwarded-For: 10.9.9.9\u202e1.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    status, _, _ = await asyncio.to_thread(raw_http, chat.port or 0, request)
    assert status == 401

    messages = [r.getMessage() for r in caplog.records if r.name.startswith("gochat")]
    assert any("kicked" in m for m in messages) and any("notice" in m for m in messages)
    assert any("failed login" in m and "\\u202e" in m for m in messages), messages
    for message in messages:
        for raw in ("\n", "\r", "\x1b", "\u202e"):
            assert raw not in message, message
        assert "y" * (LOG_ARG + 1) not in message  # user data is cut
    assert any("\\n2030-01-01" in m and "\\x1b[2J" in m for m in messages)


# --- shutdown ------------------------------------------------------------------------------


async def test_shutdown_closes_clients_1001_in_spaced_batches(make_chat: MakeChat) -> None:
    batch, batches, grace = 5, 3, 2.0
    chat = await make_chat(shutdown_batch=batch, shutdown_grace=grace)
    hub = chat.app[HUB]
    loop = asyncio.get_running_loop()
    sockets = []
    for i in range(batch * batches):
        ws, _ = await connect(chat, f"user{i:02d}")
        await join(ws, "lobby")
        sockets.append(ws)
    for ws in sockets:  # drain the presence noise, so only the close is left to read
        await ws.send_json({"type": "leave", "room": "lobby"})
        await recv_type(ws, "left")

    async def closed_at(ws: aiohttp.ClientWebSocketResponse) -> tuple[float, int | None]:
        msg = await ws.receive(timeout=grace + 3)
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        return loop.time(), ws.close_code

    waiters = [asyncio.ensure_future(closed_at(ws)) for ws in sockets]
    started = loop.time()
    stopping = asyncio.ensure_future(hub.shutdown())
    await until(lambda: hub.closing, what="shutdown to begin")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await chat.ws_connect("/ws", params=anon("late"))
    assert info.value.status == 503
    assert (await chat.get("/readyz")).status == 503
    results = await asyncio.gather(*waiters)
    await stopping
    assert loop.time() - started < grace + 0.5
    assert [code for _, code in results] == [1001] * len(sockets)
    # connection order = close order, batch by batch, with a visible gap between batches
    times = [t for t, _ in results]
    gap = grace / 2 / (batches - 1)
    groups: list[list[float]] = [[times[0]]]
    for prev, now in zip(times, times[1:], strict=False):
        assert now >= prev - 0.05
        if now - prev > gap / 2:
            groups.append([])
        groups[-1].append(now)
    assert [len(g) for g in groups] == [batch] * batches, times


def test_reliability_doc_names_only_existing_tests() -> None:
    """Every test node id in docs/reliability.md exists (a reader can audit the claims)."""
    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "reliability.md").read_text()
    ids = set(re.findall(r"`(tests/test_\w+\.py::\w+)(?:\[[^\]]*\])?`", doc))
    assert len(ids) > 20
    for node in ids:
        path, name = node.split("::")
        source = (root / path).read_text()
        assert f"def {name}(" in source, node


def test_every_setting_is_in_the_readme_and_the_limits_are_in_reliability_md() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    reliability = (root / "docs" / "reliability.md").read_text()
    for opt in OPTIONS:
        assert f"`{opt.env}`" in readme, opt.env
    for env in (
        "GOCHAT_MAX_FRAME",
        "GOCHAT_MAX_TEXT",
        "GOCHAT_MAX_ROOMS",
        "GOCHAT_RATE",
        "GOCHAT_MAX_CONN_PER_IP",
        "GOCHAT_TRUST_PROXY",
        "GOCHAT_MAX_CONNECTIONS",
        "GOCHAT_HANDSHAKE_TIMEOUT",
        "GOCHAT_SEND_BUFFER",
        "GOCHAT_WRITE_TIMEOUT",
        "GOCHAT_HEARTBEAT",
        "GOCHAT_SHUTDOWN_GRACE",
        "GOCHAT_SHUTDOWN_BATCH",
    ):
        assert f"| `{env}` |" in reliability, env
