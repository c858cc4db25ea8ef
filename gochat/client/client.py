"""`Client`: one user's connection to a gochat server, kept alive across drops.

What it promises (docs/client.md has the whole story):

- `send(room, text)` returns the `Chat` the server stored, matched by a `cid` the library
  makes; an `error` whose `ref` is that cid raises `Refused` with its code.
- When the connection drops (a network fault, or close 1001, 1011, 1013, ...), it connects
  again with exponential backoff and jitter, joins its rooms again with `since` = the last
  chat id it saw in each, and hands you what was missed as ordinary `Chat` events. A
  `Joined` with `recovered=False` tells you when the server could not prove nothing was
  missed. Close 1008 (policy: bad or expired token, rate abuse), 4001 (kicked) and the
  codes that mean this client itself is at fault (1002, 1003, 1007, 1009, 1010) end the
  client instead: connecting again would only repeat them.
- Messages sent but not confirmed when the connection dropped are kept and sent again after
  the rejoin with the same cid, unless the rejoin's history already holds that cid from
  this user (then that message is the confirmation). The server does not publish a cid this
  user already published in the room again: together, each message is published once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Final

import aiohttp
from yarl import URL

from .errors import ConnectError, ConnectionClosed, Refused
from .frames import (
    Chat,
    Error,
    Event,
    Joined,
    Left,
    Reconnecting,
    Unknown,
    Welcome,
    parse_frame,
)

log = logging.getLogger("gochat.client")

UID_RE: Final = re.compile(r"[A-Za-z0-9_-]{8,64}")

# Close codes after which connecting again would only repeat the refusal: policy (bad or
# expired token, sustained rate abuse), kicked by an operator, and those that say this
# client sent something the server cannot take. Every other code (1001 shutdown, 1011 server
# error, 1013 slow consumer, 1006 no close frame at all, ...) means "try again".
FINAL_CLOSE_CODES: Final = frozenset({1002, 1003, 1007, 1008, 1009, 1010, 4001})
# Upgrade answers worth trying again: busy, shutting down, a router in between restarting.
# Any other status (400 bad name, 401 bad token, 403 origin) ends the client.
RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
STABLE_AFTER = 10.0  # seconds a connection must last for the backoff to start over
SEEN_PER_ROOM = 1024  # chat ids remembered per room to drop a message delivered twice
MAX_FRAME = 65536  # the server's default GOCHAT_MAX_FRAME: a larger frame is closed 1009


def ws_url(url: str) -> URL:
    """The `/ws` endpoint for a server URL: http(s)://, ws(s):// or a bare host:port.

    `http://host:8080` and `http://host:8080/` become `ws://host:8080/ws`; a path is kept as
    a prefix (`https://host/chat` -> `wss://host/chat/ws`); a path that already ends in
    `/ws` is used as it is.
    """
    if "://" not in url:
        url = "http://" + url
    parsed = URL(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parsed.scheme)
    if scheme is None or not parsed.host:
        raise ValueError(f"not a gochat server URL: {url!r} (use http(s):// or ws(s)://)")
    path = parsed.path if parsed.path.endswith("/ws") else parsed.path.rstrip("/") + "/ws"
    return parsed.with_scheme(scheme).with_path(path).with_fragment(None)


@dataclass(frozen=True)
class Backoff:
    """Waits between reconnection attempts: `first` seconds, doubling per failed attempt up to
    `cap`, each drawn at random from the upper half of that ("equal jitter"), so the clients
    of a node that went down do not all come back in the same instant."""

    first: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """The wait before try number `attempt` (1 for the first)."""
        ceiling = min(self.cap, self.first * 2 ** min(attempt - 1, 32))
        return random.uniform(ceiling / 2, ceiling)


@dataclass
class _Room:
    """A room this client wants to be in: what it saw there, for `since` and dedupe."""

    joined_before: bool = False  # a `joined` came for it once: joining again is a rejoin
    last_id: str | None = None
    seen: set[str] = field(default_factory=set)
    order: deque[str] = field(default_factory=deque)
    retries: int = 0  # failed automatic rejoins in a row (unavailable, rate_limited)

    def see(self, chat_id: str) -> bool:
        """Remember `chat_id`; False when it was seen already (a duplicate)."""
        if chat_id in self.seen:
            return False
        self.seen.add(chat_id)
        self.order.append(chat_id)
        if len(self.order) > SEEN_PER_ROOM:
            self.seen.discard(self.order.popleft())
        return True


@dataclass
class _Outgoing:
    """A chat waiting for its confirmation; `sent_on` is the link it was last written on."""

    room: str
    text: str
    cid: str
    future: asyncio.Future[Chat]
    sent_on: int = 0


@dataclass
class _Link:
    """One open WebSocket, from its `welcome` until it closes."""

    number: int
    ws: aiohttp.ClientWebSocketResponse
    welcome: Welcome
    opened: float
    ready: set[str] = field(default_factory=set)  # rooms a `joined` came for on this link
    # join and leave requests in the order sent: (kind, room, automatic rejoin?)
    requests: deque[tuple[str, str, bool]] = field(default_factory=deque)
    out: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    def write(self, frame: dict[str, Any]) -> None:
        self.out.put_nowait(json.dumps(frame, ensure_ascii=False))

    def answered(self, kind: str | None, room: str | None) -> tuple[str, str, bool] | None:
        """Take the oldest request of `kind` (for `room`, when given) out of the in-flight
        list; `kind` None takes the oldest of any kind."""
        for request in self.requests:
            if (kind is None or request[0] == kind) and (room is None or request[1] == room):
                self.requests.remove(request)
                return request
        return None


class _End:
    """The last item of the event queue."""


_END: Final = _End()


class Client:
    """A gochat connection that reconnects by itself; use as `async with Client(url) as c:`.

    Anonymous users are identified by `uid` (made once per Client when not given, so every
    reconnect is the same user); with `token` (a JWT) the token says who you are.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        token: str | None = None,
        uid: str | None = None,
        session: aiohttp.ClientSession | None = None,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        heartbeat: float | None = 20.0,
        connect_timeout: float = 10.0,
        max_frame: int = MAX_FRAME,
    ) -> None:
        self.url = ws_url(url)
        self.name = name
        self.token = token
        if token is None:
            uid = uid if uid is not None else secrets.token_urlsafe(16)
            if not UID_RE.fullmatch(uid):
                raise ValueError("uid must be 8-64 of A-Z a-z 0-9 _ -")
        self.uid = uid if token is None else None
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.max_frame = max_frame
        self.welcome: Welcome | None = None  # of the current (or last) connection
        self._session = session
        self._own_session = session is None
        self._rooms: dict[str, _Room] = {}
        self._pending: OrderedDict[str, _Outgoing] = OrderedDict()
        self._join_waiters: dict[str, list[asyncio.Future[Joined]]] = {}
        self._leave_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._events: asyncio.Queue[Event | _End] = asyncio.Queue()
        self._link: _Link | None = None
        self._links = 0
        self._runner: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._wanted = asyncio.Event()  # something to do: a room to be in, a chat to send
        self._closed: ConnectionClosed | None = None
        self._closed_by_us = False
        self._attempt = 0
        self._cid_prefix = secrets.token_hex(6)
        self._cids = 0

    # --- what you can read --------------------------------------------------------------

    @property
    def user_id(self) -> str | None:
        """Who the server says we are (the `welcome`'s userId)."""
        return self.welcome.user_id if self.welcome else None

    @property
    def connected(self) -> bool:
        """True while a connection is open (it may still be joining its rooms again)."""
        return self._link is not None

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this client is in, or will join again after a reconnect."""
        return frozenset(self._rooms)

    @property
    def unconfirmed(self) -> int:
        """Chats sent (or waiting to be) whose confirmation has not come yet."""
        return len(self._pending)

    def last_id(self, room: str) -> str | None:
        """The newest chat id seen in `room`: the `since` of the next rejoin."""
        state = self._rooms.get(room)
        return state.last_id if state else None

    # --- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> Welcome:
        """Open the connection; raise `ConnectError` if that fails (no retry: a first failure
        is usually a wrong URL, name or token). Join a room soon after: the server closes a
        connection that sends nothing within its handshake timeout (10 s by default)."""
        if self._runner is not None or self._closed is not None:
            raise RuntimeError("connect() is called once per Client")
        try:
            link = await self._open()
        except BaseException:
            if self._own_session and self._session is not None:
                await self._session.close()
                self._session = None
            raise
        self.welcome = link.welcome
        self._runner = asyncio.create_task(self._run(link), name=f"gochat client {self.url}")
        return link.welcome

    async def close(self) -> None:
        """Close the connection; pending calls raise `ConnectionClosed`, iteration ends."""
        if self._closed is None:
            self._closed_by_us = True
            await self._finish(ConnectionClosed(1000, "closed by the client"))
        if self._runner is not None and self._runner is not asyncio.current_task():
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_closed(self) -> ConnectionClosed:
        """Wait until the client is closed for good; return why."""
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._runner)
        assert self._closed is not None
        return self._closed

    # --- requests -------------------------------------------------------------------------

    async def join(self, room: str, *, since: str | None = None) -> Joined:
        """Join `room` and return the server's `joined` (members, history); raise `Refused`
        (`bad_room`, `too_many_rooms`, `unauthorized`, ...). While disconnected, the join
        waits for the connection to come back. Its history is in the returned `Joined`,
        not repeated as `Chat` events."""
        self._check_open()
        fresh = room not in self._rooms
        self._rooms.setdefault(room, _Room())
        future: asyncio.Future[Joined] = asyncio.get_running_loop().create_future()
        self._join_waiters.setdefault(room, []).append(future)
        self._wanted.set()
        if self._link is not None:
            self._send_join(self._link, room, since, automatic=False)
        try:
            return await future
        finally:
            waiters = self._join_waiters.get(room, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._join_waiters.pop(room, None)
            state = self._rooms.get(room)
            if future.cancelled() and fresh and state is not None and not state.joined_before:
                del self._rooms[room]  # given up before it was ever joined

    async def leave(self, room: str) -> None:
        """Leave `room`: no rejoin after a reconnect; its unsent chats raise `Refused`
        (`not_in_room`)."""
        self._check_open()
        if self._rooms.pop(room, None) is None:
            return
        link = self._link
        for out in list(self._pending.values()):
            # what this connection has not written yet will not be: answer it now
            if out.room == room and (link is None or out.sent_on != link.number):
                refused = Refused("not_in_room", "left the room before it was sent", out.cid)
                self._reject(out, refused)
        if link is None:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._leave_waiters.setdefault(room, []).append(future)
        link.ready.discard(room)
        link.requests.append(("leave", room, False))
        link.write({"type": "leave", "room": room})
        try:
            await future
        finally:
            waiters = self._leave_waiters.get(room, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._leave_waiters.pop(room, None)

    async def send(self, room: str, text: str, *, cid: str | None = None) -> Chat:
        """Say `text` in `room`; return the `Chat` the server stored (its `id`, `ts`).

        Raises `Refused` with the server's code (`too_long`, `not_in_room`, `rate_limited`,
        `unavailable`, ...). Survives reconnects: the message is sent again, with the same
        cid, until confirmed. Cancelling the call (e.g. by a timeout) stops the resending;
        a message already written may still be delivered, once.
        """
        self._check_open()
        if cid is None:
            self._cids += 1
            cid = f"{self._cid_prefix}-{self._cids}"
        if cid in self._pending:
            raise ValueError(f"a chat with cid {cid!r} is still waiting for its confirmation")
        frame = {"type": "chat", "room": room, "text": text, "cid": cid}
        if len(json.dumps(frame, ensure_ascii=False).encode()) > self.max_frame:
            raise Refused("too_long", f"the frame would be over {self.max_frame} bytes", cid)
        future: asyncio.Future[Chat] = asyncio.get_running_loop().create_future()
        out = _Outgoing(room, text, cid, future)
        self._pending[cid] = out
        self._wanted.set()
        link = self._link
        if link is not None and (room in link.ready or room not in self._rooms):
            self._write_chat(link, out)
        try:
            return await future
        finally:
            if self._pending.get(cid) is out:
                del self._pending[cid]

    # --- events ---------------------------------------------------------------------------

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Event:
        item = await self._events.get()
        if isinstance(item, _End):
            self._events.put_nowait(item)  # every later call ends too
            if self._closed is not None and not self._closed_by_us:
                raise self._closed
            raise StopAsyncIteration
        return item

    async def receive(self, timeout: float | None = None) -> Event:
        """The next event (TimeoutError after `timeout` s; ConnectionClosed once closed)."""
        async with asyncio.timeout(timeout):
            try:
                return await self.__anext__()
            except StopAsyncIteration:
                assert self._closed is not None
                raise self._closed from None

    # --- the connection -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed
        if self._runner is None:
            raise RuntimeError("call connect() first (or use `async with Client(...)`)")

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _open(self) -> _Link:
        """Connect and read the `welcome`; raise ConnectError."""
        params: dict[str, str] = {}
        if self.token is not None:
            params["token"] = self.token
        else:
            assert self.uid is not None
            params["uid"] = self.uid
        # Without a name of our own, keep the one the server gave us first: the same user
        # under the same name after every reconnect.
        name = self.name or (self.welcome.name if self.welcome and self.token is None else None)
        if name:
            params["name"] = name
        where = str(self.url)
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await self._session_now().ws_connect(
                    self.url, params=params, heartbeat=self.heartbeat, max_msg_size=0
                )
                msg = await ws.receive()
        except aiohttp.WSServerHandshakeError as exc:
            raise ConnectError(where, f"HTTP {exc.status} {exc.message}", exc.status) from None
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            why = "connection refused" if refused else exc.strerror or str(exc)
            raise ConnectError(where, why) from None
        except aiohttp.ClientError as exc:
            raise ConnectError(where, str(exc) or type(exc).__name__) from None
        except TimeoutError:
            if ws is not None:
                await ws.close()
            raise ConnectError(where, f"no answer within {self.connect_timeout:g}s") from None
        welcome = None
        if msg.type is aiohttp.WSMsgType.TEXT:
            with contextlib.suppress(ValueError):
                frame = parse_frame(json.loads(msg.data))
                welcome = frame if isinstance(frame, Welcome) else None
        if welcome is None:
            await ws.close()
            raise ConnectError(where, f"no welcome (got {msg.type.name}: {msg.data!r:.80})")
        self._links += 1
        loop = asyncio.get_running_loop()
        return _Link(self._links, ws, welcome, loop.time())

    async def _run(self, link: _Link) -> None:
        try:
            await self._reconnecting(link)
        except Exception as exc:  # a bug of ours: end the client visibly, not silently
            log.exception("gochat client failed")
            if self._closed is None:
                await self._finish(ConnectionClosed(None, f"client error: {exc!r}"))

    async def _reconnecting(self, link: _Link) -> None:
        """Serve each connection until it closes, then connect again (or end)."""
        loop = asyncio.get_running_loop()
        while True:
            code, reason = await self._serve(link)
            if self._closed is not None:
                return
            if not self.reconnect or code in FINAL_CLOSE_CODES:
                await self._finish(ConnectionClosed(code, reason))
                return
            if loop.time() - link.opened >= STABLE_AFTER:
                self._attempt = 0
            while True:
                if not (self._rooms or self._pending):
                    # Nothing to be in: connect when there is (a silent connection would be
                    # closed by the server's first-frame timeout).
                    self._wanted.clear()
                    await self._wanted.wait()
                self._attempt += 1
                delay = self.backoff.delay(self._attempt)
                log.info("connection lost (%s %s); trying again in %.2fs", code, reason, delay)
                self._emit(Reconnecting(self._attempt, delay, code, reason))
                await asyncio.sleep(delay)
                try:
                    link = await self._open()
                except ConnectError as exc:
                    if exc.status is not None and exc.status not in RETRY_STATUSES:
                        await self._finish(ConnectionClosed(None, str(exc)))
                        return
                    code, reason = None, str(exc)
                    continue
                break

    async def _serve(self, link: _Link) -> tuple[int | None, str]:
        """Rejoin, resend, then read `link` until it closes; return its close code and why."""
        self._link = link
        self.welcome = link.welcome
        self._emit(link.welcome)
        self._writer = asyncio.create_task(self._write(link))
        for room, state in self._rooms.items():
            since = state.last_id if state.joined_before else None
            self._send_join(link, room, since, automatic=state.joined_before)
        for out in list(self._pending.values()):
            if out.room not in self._rooms:
                self._write_chat(link, out)  # the server says what it thinks of these
        reason = ""
        try:
            while True:
                msg = await link.ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self._dispatch(link, msg.data)
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    reason = str(msg.extra or "")
                    break
                elif msg.type is not aiohttp.WSMsgType.BINARY:
                    error = link.ws.exception()
                    reason = str(error) if error else "connection lost"
                    break
        finally:
            self._link = None
            self._writer.cancel()
            await asyncio.wait([self._writer])
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
            for leaving in self._leave_waiters.values():
                for done in leaving:  # no connection, no membership: the leave is done
                    if not done.done():
                        done.set_result(None)
        return link.ws.close_code, reason or "connection closed"

    async def _write(self, link: _Link) -> None:
        """The one writer of `link`: frames go out in the order they were queued."""
        while True:
            frame = await link.out.get()
            log.debug("link %d <- %s", link.number, frame)
            try:
                await link.ws.send_str(frame)
            except (aiohttp.ClientError, ConnectionError):
                return  # the reader sees the close and ends the link

    async def _finish(self, why: ConnectionClosed) -> None:
        """End the client: fail what waits, end the events, release the connection."""
        self._closed = why
        for out in list(self._pending.values()):
            self._reject(out, why)
        for joining in self._join_waiters.values():
            for joined in joining:
                if not joined.done():
                    joined.set_exception(why)
        for leaving in self._leave_waiters.values():
            for left in leaving:
                if not left.done():
                    left.set_exception(why)
        self._events.put_nowait(_END)
        link, self._link = self._link, None
        if self._writer is not None:
            self._writer.cancel()
        for timer in self._timers:
            timer.cancel()
        if link is not None:
            await link.ws.close()
        if self._own_session and self._session is not None:
            await self._session.close()

    # --- frames in ------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self._events.put_nowait(event)

    def _dispatch(self, link: _Link, raw: str) -> None:
        log.debug("link %d -> %s", link.number, raw)
        try:
            obj = json.loads(raw)
        except ValueError:
            self._emit(Unknown(None, {"raw": raw}))
            return
        frame = parse_frame(obj)
        if isinstance(frame, Chat):
            self._on_chat(frame)
        elif isinstance(frame, Joined):
            self._on_joined(link, frame)
        elif isinstance(frame, Left):
            self._on_left(link, frame)
        elif isinstance(frame, Error):
            self._on_error(link, frame)
        else:
            self._emit(frame)

    def _on_chat(self, chat: Chat) -> None:
        state = self._rooms.get(chat.room)
        if state is None:
            self._emit(chat)
        elif state.see(chat.id):
            state.last_id = chat.id
            self._emit(chat)
        self._confirm(chat)

    def _confirm(self, chat: Chat) -> None:
        """Resolve our pending send when `chat` is it (our user, our cid, that room)."""
        out = self._pending.get(chat.cid) if chat.cid is not None else None
        if out is not None and out.room == chat.room and chat.user_id == self.user_id:
            del self._pending[out.cid]
            if not out.future.done():
                out.future.set_result(chat)

    def _on_joined(self, link: _Link, joined: Joined) -> None:
        request = link.answered("join", joined.room)
        automatic = request is not None and request[2]
        joined = replace(joined, rejoin=automatic)
        state = self._rooms.get(joined.room)
        self._emit(joined)
        if state is not None:
            state.joined_before = True
            state.retries = 0
            link.ready.add(joined.room)
            for chat in joined.history:
                # a rejoin's history is what we missed: hand it on as it would have come
                if state.see(chat.id) and automatic:
                    self._emit(chat)
            if joined.history:
                state.last_id = joined.history[-1].id
            elif joined.recovered is False:
                state.last_id = None  # that id means nothing to this server any more
            for chat in joined.history:
                self._confirm(chat)  # it was published before the drop: confirmed, not resent
            for out in list(self._pending.values()):
                if out.room == joined.room and out.sent_on != link.number:
                    self._write_chat(link, out)
        for future in self._join_waiters.get(joined.room, []):
            if not future.done():
                future.set_result(joined)

    def _on_left(self, link: _Link, left: Left) -> None:
        link.answered("leave", left.room)
        link.ready.discard(left.room)
        waiters = self._leave_waiters.get(left.room, [])
        if not waiters:
            self._rooms.pop(left.room, None)  # the server took us out
            self._emit(left)
        for future in waiters:
            if not future.done():
                future.set_result(None)

    def _on_error(self, link: _Link, error: Error) -> None:
        out = self._pending.get(error.ref) if error.ref is not None else None
        if out is not None:
            self._reject(out, Refused(error.code, error.message, error.ref))
            return
        if error.ref in ("join", "leave"):
            request = link.answered(error.ref, None)
        elif error.ref is None and error.code == "rate_limited":
            request = link.answered(None, None)  # over the rate, from a server that names none
        else:
            request = None
        if request is None:
            self._emit(error)
            return
        kind, room, automatic = request
        refused = Refused(error.code, error.message, error.ref or kind)
        if kind == "leave":
            for leaving in self._leave_waiters.get(room, []):
                if not leaving.done():
                    leaving.set_exception(refused)
            return
        state = self._rooms.get(room)
        waiters = [f for f in self._join_waiters.get(room, []) if not f.done()]
        if state is not None and not waiters and error.code in ("unavailable", "rate_limited"):
            # our own rejoin could not be served now: try that room again in a while
            state.retries += 1
            delay = self.backoff.delay(state.retries)
            self._emit(replace(error, ref=kind, room=room))
            timer = asyncio.get_running_loop().call_later(delay, self._rejoin, link, room)
            self._timers.add(timer)
            return
        if state is not None and not state.joined_before:
            del self._rooms[room]
        elif state is not None and automatic:
            del self._rooms[room]  # it cannot be joined again: say so, and stop trying
            self._emit(replace(error, ref=kind, room=room))
            self._emit(Left(room))
            for out in [o for o in self._pending.values() if o.room == room]:
                self._reject(out, refused)
        for future in waiters:
            future.set_exception(refused)

    def _rejoin(self, link: _Link, room: str) -> None:
        state = self._rooms.get(room)
        if self._link is link and state is not None and room not in link.ready:
            self._send_join(link, room, state.last_id, automatic=state.joined_before)

    # --- frames out -----------------------------------------------------------------------

    def _send_join(self, link: _Link, room: str, since: str | None, automatic: bool) -> None:
        frame = {"type": "join", "room": room}
        if since is not None:
            frame["since"] = since
        link.requests.append(("join", room, automatic))
        link.write(frame)

    def _write_chat(self, link: _Link, out: _Outgoing) -> None:
        out.sent_on = link.number
        link.write({"type": "chat", "room": out.room, "text": out.text, "cid": out.cid})

    def _reject(self, out: _Outgoing, error: Exception) -> None:
        if self._pending.get(out.cid) is out:
            del self._pending[out.cid]
        if not out.future.done():
            out.future.set_exception(error)
