"""The process as an operator runs it: SIGTERM, the Procfile line, the wheel's assets."""

from __future__ import annotations

import asyncio
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import aiohttp

from gochat.__main__ import new_event_loop

from .procs import Node, free_port
from .util import ROOT, anon, uid_of


async def _client(session: aiohttp.ClientSession, node: Node, name: str) -> Any:
    ws = await session.ws_connect(f"{node.url}/ws", params=anon(name))
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    await ws.send_json({"type": "join", "room": "lobby"})
    while (await ws.receive_json(timeout=5))["type"] != "joined":
        pass
    return ws


async def _queued(port: int, tries: int) -> int:
    """How many of `tries` TCP connections the kernel completes for a process that accepts
    none (it is stopped): its listen backlog, plus one (Linux)."""
    opened = []
    try:
        for _ in range(tries):
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
            except TimeoutError:  # the SYN was dropped: the queue is full
                break
            opened.append(writer)
        return len(opened)
    finally:
        for writer in opened:
            writer.close()


async def test_the_listen_backlog_is_the_setting() -> None:
    """GOCHAT_BACKLOG is what the kernel queues while the process accepts nothing (as when
    every client reconnects at once); the default has room for far more than aiohttp's 128."""
    for env, expected in (({"GOCHAT_BACKLOG": "3"}, range(3, 6)), ({}, range(200, 201))):
        node = await Node.start(env=env)
        node.proc.send_signal(signal.SIGSTOP)
        try:
            assert await _queued(node.port, 200) in expected, env
        finally:
            node.proc.send_signal(signal.SIGCONT)
            code, err = await node.stop()
        assert code == 0, err


async def test_sigterm_closes_clients_1001_and_exits_cleanly() -> None:
    node = await Node.start(env={"GOCHAT_SHUTDOWN_GRACE": "3"})
    try:
        async with aiohttp.ClientSession() as session:
            clients = [await _client(session, node, f"user{i}") for i in range(5)]
            started = time.monotonic()
            node.proc.send_signal(signal.SIGTERM)
            for ws in clients:
                async with asyncio.timeout(5):
                    msg = await ws.receive()
                    while msg.type is aiohttp.WSMsgType.TEXT:  # presence of the others
                        msg = await ws.receive()
                assert ws.close_code == 1001, (msg.type, msg.data)
            code, err = await node.stop(sig=None, timeout=10)
            elapsed = time.monotonic() - started
    finally:
        await node.kill()
    assert code == 0, err
    assert elapsed < 5, elapsed
    for bad in ("Task was destroyed", "Traceback", "Unclosed", "never awaited"):
        assert bad not in err, err
    assert "event loop: uvloop" in err, err  # the default where uvloop is installed


async def test_heartbeat_on_uvloop_drops_the_dead_and_keeps_the_live() -> None:
    """The process as deployed (uvloop): the one-sweep heartbeat pings, a peer that answers
    stays, one that does not is dropped and the room hears it go offline."""
    node = await Node.start(env={"GOCHAT_HEARTBEAT": "0.4"})
    try:
        async with aiohttp.ClientSession() as session:
            live = await _client(session, node, "live")  # aiohttp answers pings in receive()
            dead = await session.ws_connect(f"{node.url}/ws", params=anon("dead"), autoping=False)
            await dead.send_json({"type": "join", "room": "lobby"})  # then never reads
            started = time.monotonic()
            seen: list[tuple[str, str]] = []
            async with asyncio.timeout(5):
                while (uid_of("dead"), "offline") not in seen:
                    frame = await live.receive_json()
                    if frame["type"] == "presence":
                        seen.append((frame["userId"], frame["status"]))
            elapsed = time.monotonic() - started
            assert seen[0] == (uid_of("dead"), "online"), seen
            assert 0.4 <= elapsed <= 0.4 * 1.75 + 1, elapsed  # pinged at 1x, dropped by 1.75x
            await live.send_json({"type": "chat", "room": "lobby", "text": "still here"})
            async with asyncio.timeout(5):
                while (frame := await live.receive_json())["type"] != "chat":
                    pass
            assert frame["text"] == "still here"
            await live.close()
            await dead.close()
    finally:
        code, err = await node.stop()
    assert code == 0, err
    assert "event loop: uvloop" in err, err


def test_event_loop_setting_picks_the_loop() -> None:
    for choice, module in (("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")):
        loop = new_event_loop(choice)
        try:
            assert type(loop).__module__.split(".")[0] == module, choice
        finally:
            loop.close()


async def test_procfile_web_line_serves_on_port() -> None:
    line = next(ln for ln in (ROOT / "Procfile").read_text().splitlines() if ln.startswith("web:"))
    port = free_port()
    command = ["bash", "-c", line.removeprefix("web:").strip()]
    bindir = str(Path(sys.executable).parent)
    node = await Node.start(
        env={"PORT": str(port), "PATH": f"{bindir}:/usr/bin:/bin"}, command=command, port=port
    )
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{node.url}/") as resp:
                assert resp.status == 200
                assert 'role="log"' in await resp.text()
    finally:
        code, err = await node.stop()
    assert code == 0, err
    assert shlex.split(line)[1:4] == ["python", "-m", "gochat"], line


def test_wheel_ships_client_and_console_assets(tmp_path: Path) -> None:
    # hatchling's PEP 517 hook, as the locked build backend (the venv has no pip)
    build = "import sys, hatchling.build as b; b.build_wheel(sys.argv[1])"
    subprocess.run([sys.executable, "-c", build, str(tmp_path)], cwd=ROOT, check=True)
    (wheel,) = tmp_path.glob("gochat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("gochat/_web/index.html", "gochat/_web/app.js", "gochat/_web/style.css"):
        assert asset in names, sorted(names)
    assert any(n.startswith("gochat/_admin/") for n in names), sorted(names)
