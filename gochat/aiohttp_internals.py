"""Every private name of aiohttp and asyncio that gochat uses: here, and nowhere else.

gochat takes four shortcuts through the insides of aiohttp and asyncio (docs/performance.md
measures what they save). Each relies on names no release promises to keep, so each is
checked at start-up against the exact shape it needs: an attribute exists, a method's source
is the one it was read or copied from (`fingerprint`), a behaviour shows. `detect` runs the
checks; a shortcut whose check fails is turned off and logged once, and gochat then serves
that part through aiohttp's public API only: slower, never wrong. `GOCHAT_FAST_PATHS=0`
turns every one off. tests/test_aiohttp_internals.py holds one tripwire per check, so an
upgrade that moved something fails `make test-latest` loudly instead of slowing gochat
quietly.

The shortcuts (`FastPaths`):
- inline_reader: a chat frame is handled inside aiohttp's data callback instead of by
  waking the connection's task (`_socket_classes`; ws.take_inline decides what it takes),
  and the raw bytes are shown to a watch first (chat/fragments.py: a fragmented message
  must end in time).
- release_http_parser: an accepted upgrade drops aiohttp's HTTP parser and request queue,
  which it never uses again (memory per idle connection).
- direct_write: the Outbox writes to a plain socket itself when its transport holds nothing
  (chat/outbox: one write(2) without the transport's per-call bookkeeping).
- forget_exception: a finished connection's stored exception is dropped, which would
  otherwise keep a reference cycle alive until a full garbage collection.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import io
import logging
import socket
import tokenize
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import WSMsgType, web

log = logging.getLogger(__name__)

_TEXT = WSMsgType.TEXT


def fingerprint(func: Callable[..., Any]) -> str:
    """A short digest of `func`'s source with comments and layout left out."""
    source = inspect.getsource(func)
    skip = {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENCODING,
        tokenize.ENDMARKER,
    }
    words = [
        tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type not in skip
    ]
    return hashlib.sha256(" ".join(words).encode()).hexdigest()[:16]


class Unsupported(Exception):
    """A private name is not in the shape a shortcut needs; the message says how."""


def _need(condition: bool, why: str) -> None:
    if not condition:
        raise Unsupported(why)


def _known(func: Callable[..., Any], name: str, known: frozenset[str]) -> None:
    got = fingerprint(func)
    _need(got in known, f"{name} is not the source this was written against ({got})")


# --------------------------------------------------------------------------- inline_reader
#
# aiohttp parses frames in its data callback, queues each message and wakes the connection's
# handler task, which resumes through aiohttp's handler chain for every frame. `InlineQueue`
# offers a text frame to a synchronous hook first, from inside the data callback, when
# nothing can be overtaken (the read loop waits in `receive` and the queue is empty).
#
# Relies on:
# - aiohttp._websocket.reader.WebSocketDataQueue / WebSocketReader (private module): the
#   reader calls `queue.feed_data((kind, data, extra), size)` for each message (a cpdef
#   method, so a Python subclass's override is called), and `_buffer` is the queue's deque
#   (public in reader_c.pxd). Checked by feeding a real frame through a real reader.
# - WebSocketResponse._post_start: copied below with our queue in place of aiohttp's (the
#   reader holds its queue in a C field, so it cannot be swapped afterwards). It touches
#   the response's _ws_protocol, _writer, _reset_heartbeat, _loop, _reader, _parser,
#   _max_msg_size, _compress, _decode_text, _heartbeat, _on_data_received and the request's
#   _protocol. Checked by the fingerprint of aiohttp's own method: the copy is right only for
#   the source it was copied from (3.14.4 and 3.14.5 have this one; 3.14.3 kept the parser
#   in a local, which this copy would not match).
# - aiohttp.helpers.DEFAULT_CHUNK_SIZE: the queue's limit, as aiohttp passes it.

POST_START = frozenset({"8e7edec106603053"})


class InlineHook(Protocol):
    """The part of an inline queue the read loop sets: its hook, or None."""

    inline: Callable[[str], bool] | None


@functools.cache  # one set of classes per process
def _socket_classes() -> tuple[type[web.WebSocketResponse], Any, Any]:
    """The WebSocketResponse subclass with an inline queue and a watched reader, and the
    classes of those two."""
    from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
    from aiohttp.helpers import DEFAULT_CHUNK_SIZE

    class InlineQueue(WebSocketDataQueue):
        """aiohttp's per-connection message queue, with `inline` tried before queueing."""

        __slots__ = ("inline",)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # set by the read loop while it waits in `receive`; True if it took the text
            self.inline: Callable[[str], bool] | None = None

        def feed_data(self, data: Any, size: int) -> None:
            inline = self.inline
            if inline is not None and data[0] is _TEXT and not self._buffer and inline(data[1]):
                return
            WebSocketDataQueue.feed_data(self, data, size)

    class WatchedReader(WebSocketReader):
        """aiohttp's reader, showing `watch` each chunk of raw bytes before parsing it."""

        __slots__ = ("watch",)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.watch: Callable[[bytes], None] | None = None  # FastPaths.watch_chunks

        def feed_data(self, data: Any) -> Any:
            watch = self.watch
            if watch is not None and data:
                watch(data)
            return WebSocketReader.feed_data(self, data)

    class ChatSocket(web.WebSocketResponse):
        """A WebSocketResponse whose reader feeds an InlineQueue (`inline_queue`) and shows
        its raw chunks to a watch (`chunk_reader.watch`)."""

        inline_queue: InlineQueue | None = None
        chunk_reader: WatchedReader | None = None

        def _post_start(self, request: Any, protocol: Any, writer: Any) -> None:
            # aiohttp 3.14.5's own _post_start (see POST_START), with our queue in place of
            # its WebSocketDataQueue
            self._ws_protocol = protocol
            self._writer = writer
            self._reset_heartbeat()
            queue = InlineQueue(request._protocol, DEFAULT_CHUNK_SIZE, loop=self._loop)
            self._reader = self.inline_queue = queue
            self._parser = self.chunk_reader = WatchedReader(
                queue,
                self._max_msg_size,
                compress=bool(self._compress),
                decode_text=self._decode_text,
            )
            cb = None if self._heartbeat is None else self._on_data_received
            request.protocol.set_parser(self._parser, data_received_cb=cb)
            request.protocol.keep_alive(False)

    return ChatSocket, InlineQueue, WatchedReader


class _Paused:
    """What a queue needs of its protocol: whether reading is paused."""

    _reading_paused = False

    def pause_reading(self) -> None:
        self._reading_paused = True


def _masked_text(payload: bytes) -> bytes:
    """A client's (masked, zero key) final text frame, as a browser sends it."""
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def reader_module() -> None:
    try:
        from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader  # noqa: F401
    except ImportError as exc:
        raise Unsupported(f"aiohttp's websocket reader moved: {exc}") from None


def default_chunk_size() -> None:
    from aiohttp import helpers

    _need(isinstance(getattr(helpers, "DEFAULT_CHUNK_SIZE", None), int), "it is gone")


def post_start() -> None:
    _known(web.WebSocketResponse._post_start, "WebSocketResponse._post_start", POST_START)


def inline_queue() -> None:
    """The reader offers a text frame to our feed_data, which offers it to the hook first;
    one the hook declines is queued in `_buffer` as aiohttp would queue it. Our subclass of
    the reader shows its watch every chunk, and still parses it."""
    _, queue_class, reader_class = _socket_classes()
    queue = queue_class(_Paused(), 1 << 16, loop=None)
    reader = reader_class(queue, 1024, compress=False, decode_text=True)
    chunks: list[bytes] = []
    reader.watch = chunks.append
    taken: list[str] = []

    def take(text: str) -> bool:
        taken.append(text)
        return True

    queue.inline = take
    reader.feed_data(_masked_text(b"taken"))
    _need(taken == ["taken"], f"the reader did not offer a text frame to the hook ({taken})")
    _need(not queue._buffer, "a frame the hook took was queued as well")
    queue.inline = lambda text: False
    reader.feed_data(_masked_text(b"queued"))
    buffer = queue._buffer
    _need(isinstance(buffer, deque) and len(buffer) == 1, "a declined frame was not queued")
    _need(buffer[0][0][:2] == (_TEXT, "queued"), f"queued message not (TEXT, text): {buffer}")
    _need(chunks == [_masked_text(b"taken"), _masked_text(b"queued")], "the watch missed a chunk")


# --------------------------------------------------------------------------- release_http_parser
#
# Relies on aiohttp.web_protocol.RequestHandler's private slots _payload_parser and _messages
# (and BaseProtocol's _upgraded and _parser), and on its data_received (checked by
# fingerprint): after an accepted upgrade it sends every byte to the WebSocket reader (the
# payload parser) and never again to the HTTP parser or the request queue; its other uses
# are behind `not _upgraded`, `_payload_parser is None` (a declined upgrade) or
# `_parser is not None`.

DATA_RECEIVED = frozenset({"b0103ac21ca3a90a"})  # aiohttp 3.14.5
_HANDLER_SLOTS = ("_upgraded", "_payload_parser", "_messages", "_parser")

# Always empty, shared by every upgraded connection: appends are discarded (maxlen 0)
NO_HTTP_MESSAGES: deque[Any] = deque(maxlen=0)


def handler_slots() -> None:
    from aiohttp.web_protocol import RequestHandler

    slots = {name for cls in RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    missing = [name for name in _HANDLER_SLOTS if name not in slots]
    _need(not missing, f"RequestHandler has no {', '.join(missing)}")


def data_received() -> None:
    from aiohttp.web_protocol import RequestHandler

    _known(RequestHandler.data_received, "RequestHandler.data_received", DATA_RECEIVED)


def release_http_parser(request: web.Request) -> None:
    """Drop aiohttp's HTTP parser and request queue once the upgrade is accepted.

    aiohttp keeps both until the connection is lost: the parser with its copy of the upgrade
    request's header lists and its llhttp state, and the empty queue of pipelined requests.
    An upgrade not yet complete (a request body still to come) keeps both.
    """
    proto: Any = request.protocol
    if proto._upgraded and proto._payload_parser is not None and not proto._messages:
        proto._parser = None
        proto._messages = NO_HTTP_MESSAGES


def http_parser_released(request_protocol: object) -> bool:
    """Whether `release_http_parser` dropped this connection's parser (for the tests)."""
    proto: Any = request_protocol
    return bool(
        proto._upgraded
        and proto._payload_parser is not None
        and proto._parser is None
        and proto._messages is NO_HTTP_MESSAGES
    )


# --------------------------------------------------------------------------- direct_write
#
# Transports that, when their buffer is empty, write a bytes object with one send() of the
# socket and keep nothing else in between: writing to the socket ourselves then is the same.
# - asyncio's _SelectorSocketTransport (private class): `write` checked by fingerprint, one
#   per Python minor it was read on (3.11, 3.12, 3.13).
# - uvloop's TCPTransport and UnixTransport (Cython, no source to read): they must exist and
#   carry the public methods the Outbox calls; uvloop's write tries the socket at once when
#   nothing is queued (uvloop/handles/stream.pyx, UVStream._write).
# TLS transports are never among them: their socket carries records, not our bytes.

SELECTOR_WRITE = frozenset({"30bb3497908afb8e", "2acef267d722b9d5"})  # 3.11; 3.12 and 3.13
_TRANSPORT_METHODS = ("write", "get_write_buffer_size", "is_closing", "get_extra_info")


def _plain_transports() -> frozenset[type]:
    """The transport classes whose socket the Outbox may write to itself."""
    import asyncio.selector_events as selector_events

    plain: set[type] = {getattr(selector_events, "_SelectorSocketTransport")}  # noqa: B009
    try:
        import uvloop.loop
    except ImportError:  # not installed (Windows): asyncio's loop only
        return frozenset(plain)
    return frozenset(plain | {getattr(uvloop.loop, n) for n in ("TCPTransport", "UnixTransport")})


def selector_transport() -> None:
    import asyncio.selector_events as selector_events

    selector: Any = getattr(selector_events, "_SelectorSocketTransport", None)
    _need(selector is not None, "asyncio has no _SelectorSocketTransport")
    _known(selector.write, "asyncio's _SelectorSocketTransport.write", SELECTOR_WRITE)


def uvloop_transports() -> None:
    try:
        import uvloop.loop
    except ImportError:
        return  # not installed (Windows): nothing of it is used
    for name in ("TCPTransport", "UnixTransport"):
        cls = getattr(uvloop.loop, name, None)
        methods = all(hasattr(cls, m) for m in _TRANSPORT_METHODS)
        _need(cls is not None and methods, f"uvloop.loop.{name} is not the one this expects")


# --------------------------------------------------------------------------- forget_exception
#
# A connection reset leaves aiohttp's exception on the response (WebSocketResponse._exception,
# which `exception()` returns), and its traceback holds the frames that hold the response: a
# cycle only a full collection frees (tests/test_churn.py). Checked by setting the field and
# reading it back through the public `exception()`.


def exception_field() -> None:
    ws = web.WebSocketResponse()
    _need("_exception" in dir(ws), "WebSocketResponse has no _exception")
    marker = RuntimeError("marker")
    ws._exception = marker
    _need(ws.exception() is marker, "WebSocketResponse.exception() does not read _exception")


# --------------------------------------------------------------------------- the switchboard


@dataclass(frozen=True)
class Access:
    """One private name a shortcut relies on, and the check of its shape."""

    shortcut: str
    name: str
    check: Callable[[], None]  # raises Unsupported (or anything) when the shape is not there


ACCESSES = (
    Access("inline_reader", "aiohttp._websocket.reader", reader_module),
    Access("inline_reader", "aiohttp.helpers.DEFAULT_CHUNK_SIZE", default_chunk_size),
    Access("inline_reader", "WebSocketResponse._post_start", post_start),
    Access("inline_reader", "WebSocketDataQueue.feed_data and _buffer", inline_queue),
    Access("release_http_parser", "RequestHandler's parser and queue slots", handler_slots),
    Access("release_http_parser", "RequestHandler.data_received", data_received),
    Access("direct_write", "asyncio's _SelectorSocketTransport", selector_transport),
    Access("direct_write", "uvloop's TCPTransport and UnixTransport", uvloop_transports),
    Access("forget_exception", "WebSocketResponse._exception", exception_field),
)
SHORTCUTS = tuple(dict.fromkeys(a.shortcut for a in ACCESSES))


@dataclass(frozen=True)
class FastPaths:
    """The shortcuts this app takes, each behind a method that is a no-op when it is off."""

    socket_class: type[web.WebSocketResponse] = web.WebSocketResponse
    release_parser: bool = False
    plain_transports: frozenset[type] = frozenset()
    forget_exceptions: bool = False
    off: Mapping[str, str] = field(default_factory=dict)  # shortcut -> why it is off

    def new_socket(self, **kwargs: Any) -> web.WebSocketResponse:
        return self.socket_class(**kwargs)

    def inline_queue(self, ws: web.WebSocketResponse) -> InlineHook | None:
        """The queue whose hook the read loop sets, when the inline reader is on."""
        queue: InlineHook | None = getattr(ws, "inline_queue", None)
        return queue

    def watch_chunks(
        self, ws: web.WebSocketResponse, watch: Callable[[bytes], None] | None
    ) -> bool:
        """Show `watch` every chunk of raw bytes the client sends (None: stop); False when
        the inline reader is off and nothing can be shown."""
        reader = getattr(ws, "chunk_reader", None)
        if reader is None:
            return False
        reader.watch = watch
        return True

    def after_upgrade(self, request: web.Request) -> None:
        if self.release_parser:
            release_http_parser(request)

    def direct_fd(self, transport: asyncio.BaseTransport | None) -> int:
        """The socket the Outbox may write to itself when `transport` holds nothing, or -1."""
        if transport is None or type(transport) not in self.plain_transports:
            return -1
        sock: socket.socket | None = transport.get_extra_info("socket")
        return sock.fileno() if sock is not None else -1

    def after_close(self, ws: web.WebSocketResponse) -> None:
        if self.forget_exceptions and ws.exception() is not None:
            ws._exception = None

    def describe(self) -> str:
        on = [name for name in SHORTCUTS if name not in self.off]
        return ", ".join(on) if on else "none"


def detect(enabled: bool = True) -> FastPaths:
    """Check every private access and take the shortcuts whose accesses all pass."""
    if not enabled:
        return FastPaths(off=dict.fromkeys(SHORTCUTS, "turned off (GOCHAT_FAST_PATHS=0)"))
    off: dict[str, str] = {}
    for access in ACCESSES:
        if access.shortcut in off:
            continue
        try:
            access.check()
        except Unsupported as exc:
            off[access.shortcut] = f"{access.name}: {exc}"
        except Exception as exc:  # a check that trips over a changed library is a "no"
            off[access.shortcut] = f"{access.name}: check failed: {exc!r}"
    return FastPaths(
        socket_class=(web.WebSocketResponse if "inline_reader" in off else _socket_classes()[0]),
        release_parser="release_http_parser" not in off,
        plain_transports=frozenset() if "direct_write" in off else _plain_transports(),
        forget_exceptions="forget_exception" not in off,
        off=off,
    )


def log_fast_paths(fast: FastPaths) -> None:
    """Say once, at start, which shortcuts are on, and which are off and why."""
    log.info("fast paths on: %s", fast.describe())
    for name, why in fast.off.items():
        level = logging.INFO if why.startswith("turned off") else logging.WARNING
        log.log(level, "fast path %s off, served through aiohttp's public API: %s", name, why)
