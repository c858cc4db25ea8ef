"""`gochat chat`, `gochat send` and the port-taken message, run as real processes against
real servers (stdin through a pipe, and through a pseudo-terminal)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gochat.client import Backoff, Chat, Client, Event, Presence

from .conftest import MakeChat
from .procs import Node, free_port
from .util import TIMEOUT

GOCHAT = [sys.executable, "-m", "gochat"]
# The children's local time zone: UTC+05:30 (POSIX TZ needs no zone files), so a clock
# printed in UTC or in the machine's zone would show as wrong.
CHILD_TZ = "IST-5:30"
OFFSET = timezone(timedelta(hours=5, minutes=30))
# A server setting that would not parse: the client commands must not read them.
CHILD_ENV = {**os.environ, "TZ": CHILD_TZ, "PORT": "not-a-port", "GOCHAT_RATE": "x"}
LINE = re.compile(r"\d\d:\d\d \S.*")


def hhmm(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).astimezone(OFFSET).strftime("%H:%M")


def url_of(server: Any) -> str:
    return str(server.make_url("/"))


async def next_event(client: Client, match: Callable[[Event], bool]) -> Event:
    async with asyncio.timeout(TIMEOUT):
        while True:
            event = await client.receive()
            if match(event):
                return event


def presence_of(name: str, status: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, Presence) and (e.name, e.status) == (name, status)


def chat_saying(text: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, Chat) and e.text == text


async def chat_from(client: Client, text: str) -> Chat:
    event = await next_event(client, chat_saying(text))
    assert isinstance(event, Chat)
    return event


class Lines:
    """What a child prints, line by line, waited on with a timeout."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.changed = asyncio.Event()

    def add(self, text: str) -> None:
        self.lines.append(text.rstrip("\r\n"))
        self.changed.set()

    async def wait_for(self, match: Callable[[str], bool], what: str) -> str:
        try:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    found = [line for line in self.lines if match(line)]
                    if found:
                        return found[0]
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"no line {what}; got {self.lines}") from None

    async def pump(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.add(line.decode())


@pytest.fixture
async def bob(make_chat: MakeChat) -> AsyncIterator[Client]:
    """A server, and bob in its lobby."""
    server = await make_chat()
    client = Client(url_of(server), name="bob")
    await client.connect()
    await client.join("lobby")
    yield client
    await client.close()


async def test_chat_through_pipes(bob: Client) -> None:
    url = str(bob.url.with_path("/"))
    proc = await asyncio.create_subprocess_exec(
        *GOCHAT,
        "chat",
        url,
        "--room",
        "lobby",
        "--name",
        "carol",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=CHILD_ENV,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    out, err = Lines(), Lines()
    pumps = [asyncio.create_task(out.pump(proc.stdout)), asyncio.create_task(err.pump(proc.stderr))]
    try:
        await next_event(bob, presence_of("carol", "online"))
        said = await bob.send("lobby", "hello carol")
        assert await out.wait_for(lambda s: "hello carol" in s, "with bob's message") == (
            f"{hhmm(said.ts)} bob: hello carol"
        )
        async with Client(url, name="dave") as dave:
            await dave.join("lobby")
            await out.wait_for(lambda s: s.endswith("* dave joined"), "for dave joining")
        await out.wait_for(lambda s: s.endswith("* dave left"), "for dave leaving")

        proc.stdin.write(b"hi bob\n\nlast words\n")  # the empty line is not sent
        proc.stdin.close()  # end of input right away: it must still wait for confirmation
        hi = await chat_from(bob, "hi bob")
        last = await chat_from(bob, "last words")
        assert (hi.name, last.name) == ("carol", "carol")
        code = await asyncio.wait_for(proc.wait(), TIMEOUT)
        await asyncio.wait_for(asyncio.gather(*pumps), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err.lines
    assert out.lines.count(f"{hhmm(hi.ts)} carol: hi bob") == 1  # its own, once confirmed
    assert out.lines[-1] == f"{hhmm(last.ts)} carol: last words"
    assert all(LINE.fullmatch(line) for line in out.lines), out.lines
    assert not [line for line in out.lines if line.endswith(": ")], out.lines  # no empty chat


async def test_chat_on_a_terminal(bob: Client) -> None:
    url = str(bob.url.with_path("/"))
    master, slave = os.openpty()
    proc = await asyncio.create_subprocess_exec(
        *GOCHAT,
        "chat",
        url,
        "--name",
        "tina",
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=CHILD_ENV,
    )
    os.close(slave)
    out = Lines()
    partial = bytearray()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            loop.remove_reader(master)
            return
        partial.extend(data)
        while b"\n" in partial:
            line, _, rest = partial.partition(b"\n")
            out.add(line.decode(errors="replace"))
            partial[:] = rest

    loop.add_reader(master, readable)
    try:
        await next_event(bob, presence_of("tina", "online"))  # --room defaults to lobby
        said = await bob.send("lobby", "hello terminal")
        await out.wait_for(lambda s: s == f"{hhmm(said.ts)} bob: hello terminal", "from bob")
        os.write(master, b"typed on a tty\n")
        typed = await chat_from(bob, "typed on a tty")
        mine = f"{hhmm(typed.ts)} tina: typed on a tty"
        await out.wait_for(lambda s: s == mine, "with its own message")
        os.write(master, b"\x04")  # Ctrl-D: end of input
        code = await asyncio.wait_for(proc.wait(), TIMEOUT)
    finally:
        loop.remove_reader(master)
        os.close(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, out.lines


async def test_send_prints_the_id_once_confirmed(bob: Client) -> None:
    url = str(bob.url.with_path("/"))
    proc = await asyncio.create_subprocess_exec(
        *GOCHAT,
        "send",
        url,
        "--room",
        "lobby",
        "--text",
        "one shot",
        "--name",
        "sam",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=CHILD_ENV,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, stderr
    chat = await chat_from(bob, "one shot")
    assert stdout.decode() == f"{chat.id}\n"
    assert chat.name == "sam"


async def run_gochat(*args: str, timeout: float = TIMEOUT) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *GOCHAT,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=CHILD_ENV,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


async def test_send_refused_exits_1_with_the_code(make_chat: MakeChat) -> None:
    server = await make_chat(max_text=5)
    code, out, err = await run_gochat(
        "send", url_of(server), "--room", "lobby", "--text", "longer than five"
    )
    assert code == 1, err
    assert out == ""
    assert "too_long" in err and len(err.splitlines()) == 1, err


async def test_send_without_a_server_says_so_in_one_line() -> None:
    port = free_port()
    code, out, err = await run_gochat(
        "send", f"http://127.0.0.1:{port}", "--room", "r", "--text", "x"
    )
    assert code == 2, err
    assert out == ""
    assert len(err.splitlines()) == 1 and "cannot connect" in err and str(port) in err, err


@pytest.mark.slow
async def test_a_pipe_faster_than_the_rate_is_slowed_down_not_cut(make_chat: MakeChat) -> None:
    """50 lines at once to a server allowing 20/s (burst 40): every line arrives, in order,
    because the chat pauses when refused for the rate instead of pressing on (1008)."""
    server = await make_chat(rate=20)
    async with Client(url_of(server), name="bob") as bob:
        await bob.join("lobby")
        proc = await asyncio.create_subprocess_exec(
            *GOCHAT,
            "chat",
            url_of(server),
            "--name",
            "pat",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=CHILD_ENV,
        )
        lines = [f"line {i}" for i in range(50)]
        _, stderr = await asyncio.wait_for(
            proc.communicate("\n".join(lines).encode() + b"\n"), TIMEOUT * 2
        )
        heard: list[str] = []
        async with asyncio.timeout(TIMEOUT):
            while len(heard) < len(lines):
                event = await bob.receive()
                if isinstance(event, Chat):
                    heard.append(event.text)
    assert proc.returncode == 0, stderr
    assert heard == lines
    assert b"not sent" not in stderr, stderr


@pytest.mark.slow
async def test_chat_says_when_it_reconnects_and_when_messages_may_be_missing() -> None:
    """An in-memory node restarted under `gochat chat`: it says the connection was lost,
    that it is back, and that the history did not reach back (the old ids are gone)."""
    env = {"GOCHAT_ADMIN_TOKEN": "t" * 32}
    node = await Node.start(env=env)
    bob = Client(node.url, name="bob", backoff=Backoff(0.05, 0.2))
    proc = await asyncio.create_subprocess_exec(
        *GOCHAT,
        "chat",
        node.url,
        "--name",
        "una",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=CHILD_ENV,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    out, err = Lines(), Lines()
    pumps = [asyncio.create_task(out.pump(proc.stdout)), asyncio.create_task(err.pump(proc.stderr))]
    try:
        await bob.connect()
        await bob.join("lobby")
        await next_event(bob, presence_of("una", "online"))
        said = await bob.send("lobby", "before")
        await out.wait_for(lambda s: s.endswith("bob: before"), "with bob's message")
        await node.stop()
        await out.wait_for(lambda s: "* connection lost (1001" in s, "saying it lost the server")
        node = await Node.start(env=env, port=node.port)
        await out.wait_for(lambda s: "* reconnected" in s, "saying it is back")
        await out.wait_for(lambda s: "lobby: some messages may be missing" in s, "on the gap")
        proc.stdin.write(b"after the restart\n")
        proc.stdin.close()
        code = await asyncio.wait_for(proc.wait(), TIMEOUT)
        await asyncio.wait_for(asyncio.gather(*pumps), TIMEOUT)
    finally:
        await bob.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await node.stop()
    assert code == 0, err.lines
    assert out.lines[0] == f"{hhmm(said.ts)} bob: before"
    assert out.lines[-1].endswith(" una: after the restart"), out.lines


async def test_a_taken_port_is_one_line_and_a_non_zero_exit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *GOCHAT,
            "--port",
            str(port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HOST": "127.0.0.1", "GOCHAT_ADMIN_TOKEN": "t" * 32},
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    err = stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    about_port = [line for line in err.splitlines() if str(port) in line]
    assert len(about_port) == 1, err
    assert about_port == err.splitlines()[-1:], err  # the last word, not lost in a log
    assert "already in use" in about_port[0]
    assert "PORT" in about_port[0] and "--port" in about_port[0]
