"""`/ws`: origin check, upgrade, the read loop, and Hub errors turned into frames and codes.

This handler is the only reader of its socket. It never writes to it directly: every frame
goes through the Hub's Outbox, and closes go through aiohttp's close handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import secrets
import sys
import time

from aiohttp import WSMsgType, web

from .. import protocol
from ..aiohttp_internals import FastPaths, InlineHook
from ..config import Settings
from ..forwarded import client_address, own_origin
from ..keys import FAST_PATHS, FIRST_FRAME, HUB, SETTINGS
from ..protocol import Chat, CloseCode, ErrorCode, Join, ProtocolError
from .auth import AuthError, verify
from .client import Client, RateVerdict
from .fragments import FragmentWatch
from .heartbeat import pong_frame
from .hub import Hub
from .publishing import MAX_IN_FLIGHT

log = logging.getLogger(__name__)

# Reserved for the server and operator notices: an anonymous user cannot take them.
RESERVED_NAMES = frozenset({"system", "admin", "operator", "moderator", "gochat"})
MAX_AGENT = 256  # characters of a User-Agent kept for the console
RATE_GRACE = 5.0  # seconds over the rate after the first rate_limited before close 1008
# An anonymous user's id, chosen by the client (a browser keeps one in local storage)
ANON_UID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def origin_allowed(request: web.Request, settings: Settings) -> bool:
    """No Origin (not a browser), our own origin, or one of GOCHAT_ALLOWED_ORIGINS."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.strip().rstrip("/")
    return origin.lower() == own_origin(request, settings) or origin in settings.allowed_origins


def display_name(raw: str | None) -> str:
    """The `name` query parameter checked, or a fresh guest name."""
    if raw is None or not raw.strip():
        return f"guest-{secrets.token_hex(2)}"
    name = raw.strip()
    if len(name) > 32 or not name.isprintable() or protocol.has_bad_chars(name):
        raise web.HTTPBadRequest(text="name must be 1-32 printable characters")
    if name.casefold() in RESERVED_NAMES:
        raise web.HTTPBadRequest(text=f"the name {name!r} is reserved")
    return name


def anonymous_uid(raw: str | None) -> str:
    """The `uid` query parameter checked, or a fresh one: an anonymous user's identity.

    Tabs of one browser share it, so they are one member of a room, and the display name
    is only a name: renaming keeps the user, and two people who pick one name stay two.
    """
    if raw is None:
        return secrets.token_urlsafe(16)
    if ANON_UID.fullmatch(raw) is None:
        raise web.HTTPBadRequest(text="uid must be 8-64 characters of A-Z a-z 0-9 _ -")
    return raw


async def chat_ws(request: web.Request) -> web.StreamResponse:
    """The chat WebSocket."""
    settings = request.app[SETTINGS]
    hub = request.app[HUB]
    if hub.closing:
        raise web.HTTPServiceUnavailable(text="server shutting down")
    if not origin_allowed(request, settings):
        raise web.HTTPForbidden(text="origin not allowed")
    remote = client_address(request, settings)
    if settings.max_connections and len(hub.clients) >= settings.max_connections:
        raise web.HTTPServiceUnavailable(text="node full")
    if settings.max_conn_per_ip and hub.per_ip[remote.rsplit(":", 1)[0]] >= (
        settings.max_conn_per_ip
    ):
        raise web.HTTPTooManyRequests(text="too many connections from this address")

    allowed_rooms: frozenset[str] | None = None
    expires: float | None = None
    if settings.auth_secret:
        try:
            ident = verify(request.query.get("token"), settings.auth_secret)
        except AuthError as exc:
            raise web.HTTPUnauthorized(text=str(exc)) from None
        user_id, name, allowed_rooms, expires = (
            ident.user_id,
            ident.name,
            ident.rooms,
            ident.expires,
        )
    else:
        # Anonymous: the id the client keeps (or a fresh one), and a name for display
        name = display_name(request.query.get("name"))
        user_id = anonymous_uid(request.query.get("uid"))

    fast = request.app[FAST_PATHS]
    ws = fast.new_socket(
        # pings: one sweep for every connection (heartbeat.py), not aiohttp's timer each;
        # so pings and pongs come to the read loop, which answers pings itself
        heartbeat=None,
        autoping=False,
        max_msg_size=settings.max_frame,
        compress=False,
        timeout=max(settings.shutdown_grace, 1.0),
    )
    await ws.prepare(request)
    fast.after_upgrade(request)  # drops aiohttp's HTTP parser: memory per idle connection
    transport = request.transport
    client = Client(
        hub.next_conn_id(),
        user_id,
        name,
        remote,
        ws,
        transport,
        allowed_rooms,
        fd=fast.direct_fd(transport),
        # most connections share a handful of agents: one string each, not one per socket
        user_agent=sys.intern(request.headers.get("User-Agent", "")[:MAX_AGENT]),
    )
    hub.connect(client)
    loop = asyncio.get_running_loop()
    watch = request.app.get(FIRST_FRAME)
    if watch is not None:
        watch.watch(client)  # close 1008 if it says nothing (firstframe.py)
    expiry: asyncio.TimerHandle | None = None
    if expires is not None:
        expiry = loop.call_at(
            loop.time() + max(0.0, expires - time.time()),
            hub.drop,
            client,
            CloseCode.POLICY,
            "token expired",
        )
    try:
        await read_loop(hub, client, ws, settings, fast)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s unexpected error", client.id)
        await close(hub, client, ws, CloseCode.INTERNAL, "internal error")
    finally:
        if watch is not None:
            watch.forget(client)
        if expiry is not None:
            expiry.cancel()
        if not ws.closed:
            # The peer vanished without a close frame (or the heartbeat aborted it)
            with contextlib.suppress(Exception):
                await ws.close(code=CloseCode.GOING_AWAY, drain=False)
        await hub.disconnect(client, ws.close_code)
        if transport is not None and (
            transport.get_write_buffer_size() or not transport.is_closing()
        ):
            # A peer that stopped reading would pin the unsent bytes forever: give the
            # close frame a grace period, then abort. (Only then: the timer keeps the
            # connection's buffers alive until it fires.)
            loop.call_later(max(settings.shutdown_grace, 1.0), abort_if_stuck, transport)
        # a connection reset's exception would keep the response in a reference cycle
        fast.after_close(ws)
    return ws


def abort_if_stuck(transport: asyncio.Transport) -> None:
    """Abort a transport that still holds unsent bytes after its grace period."""
    if transport.get_write_buffer_size() or not transport.is_closing():
        transport.abort()


async def close(hub: Hub, client: Client, ws: web.WebSocketResponse, code: int, why: str) -> None:
    """Close from the reader's own task (binary frame, abuse, internal error)."""
    client.mark_closed(code)
    hub.flush()  # what was queued before the fault still goes out, in order
    await ws.close(code=code, message=why.encode()[:120], drain=False)


async def read_loop(
    hub: Hub, client: Client, ws: web.WebSocketResponse, settings: Settings, fast: FastPaths
) -> None:
    queue = fast.inline_queue(ws)
    fragments = FragmentWatch(
        settings.fragment_timeout, functools.partial(fragment_overdue, hub, client)
    )
    fast.watch_chunks(ws, fragments.feed)
    try:
        await read_frames(hub, client, ws, settings, queue)
    finally:
        fragments.stop()
        fast.watch_chunks(ws, None)
        if queue is not None:
            queue.inline = None  # it refers to the client, which refers to the socket


def fragment_overdue(hub: Hub, client: Client) -> None:
    """A fragmented message did not end in time (fragments.py): close 1008."""
    timeout = hub.settings.fragment_timeout
    hub.drop(client, CloseCode.POLICY, f"message not completed within {timeout:g}s")


async def read_frames(
    hub: Hub,
    client: Client,
    ws: web.WebSocketResponse,
    settings: Settings,
    queue: InlineHook | None,
) -> None:
    rate = settings.rate
    inline = functools.partial(take_inline, hub, client) if queue is not None else None
    while True:
        # receive(), not `async for`: one coroutine frame fewer per idle connection
        # (docs/performance.md, S3), and the same exits (CLOSE/CLOSING/CLOSED fall to the
        # last branch). While it waits, a chat frame may be taken by `take_inline` without
        # waking this task.
        if queue is not None:
            queue.inline = inline
        msg = await ws.receive()
        if queue is not None:
            queue.inline = None
        client.heard = True  # anything from the peer shows it is alive (heartbeat.py)
        kind = msg.type
        if kind is WSMsgType.TEXT or kind is WSMsgType.PING or kind is WSMsgType.PONG:
            # control frames count toward the rate too: a ping flood ends like any flood
            verdict = client.rate_verdict(rate, time.monotonic(), RATE_GRACE)
            if verdict is RateVerdict.CUT:
                await close(hub, client, ws, CloseCode.POLICY, "rate limit exceeded")
                return
            if kind is WSMsgType.TEXT:
                client.msgs_in += 1
                if verdict is RateVerdict.WITHIN:
                    await handle_text(hub, client, msg.data)
                else:
                    hub.send_error(client, rate_limited(rate, frame_ref(msg.data)))
            elif verdict is RateVerdict.WITHIN:
                if kind is WSMsgType.PING:
                    hub.send_frame(client, pong_frame(msg.data[:125]))
            elif verdict is RateVerdict.FIRST_OVER:  # unanswered pings from here: said once
                hub.send_error(client, rate_limited(rate, kind.name.lower()))
        elif kind is WSMsgType.BINARY:
            await close(hub, client, ws, CloseCode.UNSUPPORTED, "binary frames not supported")
            return
        else:  # closed, or ERROR (e.g. frame too big: aiohttp has closed it with 1009 already)
            return


def rate_limited(rate: float, ref: str | None) -> ProtocolError:
    return ProtocolError(ErrorCode.RATE_LIMITED, f"over {rate:g} messages/s", ref)


# A chat frame's `cid`, found without decoding the frame: a refused frame costs a search,
# not a parse. `"cid"` followed by a colon can only be a key (a string value is never
# followed by one), and inside a string its quotes would be escaped.
_CID = re.compile(r'"cid"\s*:\s*("(?:[^"\\]|\\.){0,256}")')
_TYPE = re.compile(r'"type"\s*:\s*"(chat|join|leave)"')


def frame_ref(raw: str) -> str | None:
    """What a refused frame's `error` refers to, read without decoding it: a chat's `cid`
    when it has one, else the frame's type (`chat`, `join`, `leave`), else nothing known."""
    kind = _TYPE.search(raw)
    if kind is None:
        return None
    if kind.group(1) != "chat":
        return kind.group(1)
    found = _CID.search(raw)
    if found is not None:
        try:
            cid = protocol.usable_cid(json.loads(found.group(1)))
        except ValueError:
            cid = None
        if cid is not None:
            return cid
    return "chat"


def take_inline(hub: Hub, client: Client, raw: str) -> bool:
    """Act on a text frame inside aiohttp's data callback, while the read loop waits with
    nothing queued (aiohttp_internals' inline reader): True if taken, False to leave it.

    It takes a chat that is valid, within the rate, and needs no wait for the broker: the
    common case, and the one whose task wake-up would cost more than the Hub's work. It
    declines everything else before changing any state, and the read loop then handles the
    frame as it always did (joins and leaves wait for the broker; errors and limits answer
    from there), so each outcome has one implementation. A refused chat is answered here.
    """
    if client.closed or client.limited_since is not None:
        return False
    try:
        msg = protocol.decode(raw)
    except ProtocolError:
        return False
    if type(msg) is not Chat or client.unconfirmed >= MAX_IN_FLIGHT:
        return False
    rate = hub.settings.rate
    if rate and not client.take_token(rate, time.monotonic()):
        return False
    client.heard = True
    client.msgs_in += 1
    try:
        hub.publisher.say_inline(client, msg.room, msg.text, msg.cid)
    except ProtocolError as err:
        hub.send_error(client, err)
    except Exception:
        log.exception("%s unexpected error", client.id)
        hub.drop(client, CloseCode.INTERNAL, "internal error")
    return True


async def handle_text(hub: Hub, client: Client, raw: str) -> None:
    """Decode one frame and act on it; a refused request becomes an `error` frame."""
    try:
        msg = protocol.decode(raw)
        if isinstance(msg, Chat):
            await hub.publisher.say(client, msg.room, msg.text, msg.cid)
        elif isinstance(msg, Join):
            await hub.memberships.join(client, msg.room, msg.since)
        else:
            await hub.memberships.leave(client, msg.room)
    except ProtocolError as err:
        hub.send_error(client, err)
