"""`gochat chat` and `gochat send`: the terminal chat and the one-shot sender, on `Client`.

Exit codes: 0 done (every message confirmed), 1 a message or the join was refused (the
error code is printed on stderr), 2 no connection (could not connect, or closed for good).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from .client import Client
from .errors import ConnectionClosed, GochatError, Refused
from .frames import Chat, Error, Joined, Left, Presence, Reconnecting, Welcome

OK, REFUSED, NO_CONNECTION, INTERRUPTED = 0, 1, 2, 130
TOKEN_ENV = "GOCHAT_TOKEN"
Say = Callable[..., None]  # say(line, stream=stdout)
RATE_PAUSES = (1.5, 3.0, 6.0, 12.0)  # seconds between tries of a line refused for the rate

# Shown as "?" on the terminal: control characters but tab (the server refuses them, but a
# terminal should not trust any server with its escape sequences), and the bidi overrides.
_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def add_commands(sub: Any) -> None:
    """Add `chat` and `send` to the CLI's subcommands (`sub` from add_subparsers)."""
    chat = sub.add_parser(
        "chat",
        help="chat in a room from the terminal (lines typed are sent)",
        description="Join ROOM on the server at URL: each line of standard input is sent, "
        "each message of the room is printed as `HH:MM name: text`. Reconnects by itself; "
        "at the end of input it waits for its messages to be confirmed, then exits.",
    )
    _common(chat, room_required=False)
    send = sub.add_parser(
        "send",
        help="send one message and print its id once the server confirmed it",
        description="Join ROOM on the server at URL, send TEXT, print the stored message's "
        "id and exit 0; exit 1 with the error code on stderr when it is refused, 2 when the "
        "server cannot be reached.",
    )
    _common(send, room_required=True)
    send.add_argument("--text", required=True, help="the message")
    send.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait in all (default: 10)"
    )


def _common(parser: argparse.ArgumentParser, room_required: bool) -> None:
    parser.add_argument("url", help="the server, e.g. http://localhost:8080 (or ws://.../ws)")
    if room_required:
        parser.add_argument("--room", required=True, help="the room")
    else:
        parser.add_argument("--room", default="lobby", help="the room (default: lobby)")
    parser.add_argument("--name", help="display name (anonymous use; default: a guest name)")
    parser.add_argument(
        "--token", help=f"a client JWT, when the server has client auth on [{TOKEN_ENV}]"
    )


def run(args: argparse.Namespace) -> int:
    """Run the `chat` or `send` command; return the exit code."""
    token = args.token or os.environ.get(TOKEN_ENV) or None
    prog = f"gochat {args.command}"
    try:
        client = Client(args.url, name=args.name, token=token)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return NO_CONNECTION
    try:
        if args.command == "send":
            return asyncio.run(send(client, args.room, args.text, args.timeout))
        return asyncio.run(chat(client, args.room, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        return INTERRUPTED


async def send(client: Client, room: str, text: str, timeout: float) -> int:
    """Send one message; print its id."""
    try:
        async with asyncio.timeout(timeout):
            await client.connect()
            await client.join(room)
            chat = await client.send(room, text)
    except Refused as exc:
        print(f"gochat send: refused: {exc.code} ({exc.message})", file=sys.stderr)
        return REFUSED
    except GochatError as exc:
        print(f"gochat send: {exc}", file=sys.stderr)
        return NO_CONNECTION
    except TimeoutError:
        print(f"gochat send: no confirmation within {timeout:g}s", file=sys.stderr)
        return NO_CONNECTION
    finally:
        await client.close()
    print(chat.id)
    return OK


def clean(text: str) -> str:
    """`text` safe for a terminal: control characters and bidi overrides shown as `?`."""
    return _UNPRINTABLE.sub("?", text)


def chat_line(chat: Chat) -> str:
    """`HH:MM name: text` in local time; later lines of a multi-line text are indented."""
    first, *rest = chat.text.split("\n")
    line = f"{chat.local_time():%H:%M} {clean(chat.name)}: {clean(first)}"
    return "\n".join([line, *(f"      {clean(more)}" for more in rest)])


def system_line(text: str) -> str:
    """`HH:MM * text`, now."""
    return f"{datetime.now():%H:%M} * {text}"


async def chat(client: Client, room: str, out: TextIO, err: TextIO) -> int:
    """The terminal chat: stdin lines to `room`, the room's messages to `out`."""

    def say(line: str, stream: TextIO = out) -> None:
        print(line, file=stream, flush=True)

    try:
        welcome = await client.connect()
        joined = await client.join(room)
    except Refused as exc:
        say(f"gochat chat: cannot join {room}: {exc.code} ({exc.message})", err)
        await client.close()
        return REFUSED
    except GochatError as exc:
        say(f"gochat chat: {exc}", err)
        await client.close()
        return NO_CONNECTION
    names = ", ".join(clean(m.name) for m in joined.members)
    say(f"* {clean(welcome.name)} in {room} on {welcome.node}; here: {names}", err)
    for old in joined.history:
        say(chat_line(old))

    printer = asyncio.create_task(_print_events(client, room, say, err))
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    _read_stdin(asyncio.get_running_loop(), lines)
    sender = asyncio.create_task(_send_lines(client, room, lines, say, err))
    await asyncio.wait({sender, printer}, return_when=asyncio.FIRST_COMPLETED)
    if not sender.done():  # closed for good: the printer said why
        sender.cancel()
        await asyncio.wait([sender])
        await client.close()
        return NO_CONNECTION
    closed = printer.done()
    await client.close()
    await printer
    if closed:
        return NO_CONNECTION
    return OK if sender.result() else REFUSED


async def _send_lines(
    client: Client, room: str, lines: asyncio.Queue[str | None], say: Say, err: TextIO
) -> bool:
    """Send each line in turn, each once confirmed before the next (so a long pipe keeps its
    order and its pace), until the end of input. False if any was refused."""
    sent_all = True
    while (line := await lines.get()) is not None:
        text = line.rstrip("\r\n")
        if text.strip():
            sent_all = await _send_line(client, room, text, say, err) and sent_all
    return sent_all


async def _send_line(client: Client, room: str, text: str, say: Say, err: TextIO) -> bool:
    """Send one line; its confirmation is printed by the event printer. Over the server's
    rate, wait and try again: a pause of over a second's worth of the rate forgives it
    (docs/protocol.md), so a pipe faster than the rate slows down instead of being cut."""
    pauses = iter(RATE_PAUSES)
    while True:
        try:
            await client.send(room, text)
        except Refused as exc:
            pause = next(pauses, None) if exc.code == "rate_limited" else None
            if pause is not None:
                await asyncio.sleep(pause)
                continue
            say(f"* not sent ({exc.code}): {clean(text)}", err)
            return False
        except ConnectionClosed:
            return False
        return True


async def _print_events(client: Client, room: str, say: Say, err: TextIO) -> None:
    """Print what happens until the client closes."""
    lost = False
    try:
        async for event in client:
            if isinstance(event, Chat):
                if event.room == room:
                    say(chat_line(event))
            elif isinstance(event, Presence):
                what = "joined" if event.status == "online" else "left"
                say(system_line(f"{clean(event.name)} {what}"))
            elif isinstance(event, Reconnecting):
                why = clean(f"{event.code} {event.reason}" if event.code else event.reason)
                what = "still no connection" if lost else "connection lost"
                lost = True
                say(system_line(f"{what} ({why}); reconnecting in {event.delay:.1f}s"))
            elif isinstance(event, Welcome) and lost:
                lost = False
                say(system_line(f"reconnected (node {clean(event.node)})"))
            elif isinstance(event, Joined) and event.rejoin and event.incomplete:
                gap = "some messages may be missing (the history did not reach back)"
                say(system_line(f"{event.room}: {gap}"))
            elif isinstance(event, Left):
                say(system_line(f"no longer in {event.room}"))
            elif isinstance(event, Error):
                say(f"* error {event.code}: {clean(event.message)}", err)
    except ConnectionClosed as exc:
        say(f"gochat chat: {exc}", err)


def _read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """Read standard input in a daemon thread (pipes, files and terminals alike, and it never
    keeps the process alive); each line, then None at the end, goes to `lines`."""

    def put(item: str | None) -> None:
        try:
            loop.call_soon_threadsafe(lines.put_nowait, item)
        except RuntimeError:  # the loop is gone: the command has ended
            pass

    def read() -> None:
        try:
            for raw in sys.stdin.buffer:
                put(raw.decode("utf-8", errors="replace"))
        except (OSError, ValueError):
            pass
        put(None)

    threading.Thread(target=read, name="gochat stdin", daemon=True).start()
