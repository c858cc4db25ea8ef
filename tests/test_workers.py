"""`gochat --workers N` as an operator runs it: real processes on one port through a real
Redis, a worker killed and replaced, SIGTERM to the parent alone or to the whole group; and
the open-files limit every process raises at start."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from .procs import Node, StderrLines, free_port
from .redis_server import RedisServer
from .util import ROOT, anon, expect_close, join, recv, recv_type

GOCHAT = [sys.executable, "-m", "gochat"]
START = 20.0  # seconds for the workers to serve: two interpreters start on shared cores
WS = aiohttp.ClientWebSocketResponse


@dataclass
class Workers:
    """A `gochat --workers 2` parent in a session (and process group) of its own."""

    proc: asyncio.subprocess.Process
    port: int
    log: StderrLines
    nodes: list[str] = field(default_factory=list)  # worker node ids, by index

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def pid_of(self, index: int, start: int = 0) -> int:
        found = await self.log.wait_for(rf"worker {index} started: pid (\d+)", START, start)
        return int(found.group(1))

    async def exit(self, timeout: float) -> tuple[int, str]:
        """Wait for the parent to exit; its return code and all of stderr."""
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            return code, await self.log.rest()


@asynccontextmanager
async def workers(env: dict[str, str], procfile: bool = False) -> AsyncIterator[Workers]:
    """Start `python -m gochat --workers 2 --port P` as the README says (or the Procfile's
    line with GOCHAT_WORKERS=2, as a PaaS runs it) and wait until both workers serve; at
    exit, SIGKILL whatever of its process group is left."""
    port = free_port()
    full_env = {**os.environ, "HOST": "127.0.0.1", "GOCHAT_LOG_LEVEL": "INFO", **env}
    command = [*GOCHAT, "--workers", "2", "--port", str(port)]
    if procfile:
        line = next(ln for ln in (ROOT / "Procfile").read_text().splitlines() if ln[:4] == "web:")
        command = ["bash", "-c", line.removeprefix("web:").strip()]
        bindir = str(Path(sys.executable).parent)
        full_env.update(PORT=str(port), GOCHAT_WORKERS="2", PATH=f"{bindir}:/usr/bin:/bin")
    proc = await asyncio.create_subprocess_exec(
        *command,
        env=full_env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stderr is not None
    running = Workers(proc, port, StderrLines(proc.stderr))
    try:
        for index in range(2):
            found = await running.log.wait_for(rf"node (\S+-w{index}) serving on", START)
            running.nodes.append(found.group(1))
        yield running
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, by its id
        except ProcessLookupError:
            pass
        await proc.wait()
        await asyncio.wait_for(running.log.rest(), 10)  # the pipe ends with the last worker


async def spread(
    session: aiohttp.ClientSession, w: Workers, each: int
) -> dict[str, list[tuple[WS, str]]]:
    """Open connections until each worker holds `each` of them (with their userId):
    SO_REUSEPORT picks a worker by the connection's addresses, so a few dozen reach both.
    The others are closed."""
    held: dict[str, list[tuple[WS, str]]] = {node: [] for node in w.nodes}
    for n in range(60):
        ws = await session.ws_connect(f"{w.url}/ws", params=anon(f"u{n}"))
        welcome = await recv(ws)
        assert welcome["type"] == "welcome", welcome
        if len(held[welcome["node"]]) < each:
            held[welcome["node"]].append((ws, welcome["userId"]))
        else:
            await ws.close()
        if all(len(v) == each for v in held.values()):
            return held
    raise AssertionError(f"60 connections did not reach both workers: {held}")


@pytest.mark.parametrize("redis_url", ["", "redis://127.0.0.1:1"])
async def test_more_than_one_worker_needs_redis_and_a_free_port(redis_url: str) -> None:
    """Without REDIS_URL: exit 2 at once, one line that says why. With it, a taken port is
    the same one line as for a single process, before any worker starts."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *GOCHAT,
            "--workers",
            "2",
            "--port",
            str(port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**env, "HOST": "127.0.0.1", "REDIS_URL": redis_url},
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    err = stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err and "worker 0 started" not in err, err
    last = err.splitlines()[-1]
    if redis_url:
        assert f"port {port} is already in use" in last, err
    else:
        assert last.startswith("gochat: --workers 2 needs REDIS_URL: "), err
        assert sum("REDIS_URL" in line for line in err.splitlines()) == 1, err
        assert "separate processes" in last and "only Redis" in last, err


@pytest.mark.redis
async def test_clients_on_two_workers_are_one_chat(redis_server: RedisServer) -> None:
    async with (
        workers({"REDIS_URL": redis_server.url}) as w,
        aiohttp.ClientSession() as session,
    ):
        assert w.nodes[0] != w.nodes[1] and w.nodes[0][:-1] == w.nodes[1][:-1], w.nodes
        held = await spread(session, w, 1)
        ((a, a_id),), ((b, b_id),) = held[w.nodes[0]], held[w.nodes[1]]
        await join(a, "lobby")
        joined = await join(b, "lobby")
        assert {m["userId"] for m in joined["members"]} == {a_id, b_id}, joined
        online = await recv_type(a, "presence")
        assert (online["userId"], online["status"]) == (b_id, "online"), online
        await a.send_json({"type": "chat", "room": "lobby", "text": "across", "cid": "c1"})
        got = await recv_type(b, "chat")
        assert got["text"] == "across", got
        await b.send_json({"type": "chat", "room": "lobby", "text": "and back", "cid": "c2"})
        while (frame := await recv_type(a, "chat"))["text"] == "across":
            pass  # a's own echo first
        assert frame["text"] == "and back", frame
        # The console: the parent made one token for all, and every worker is a node.
        token = (await w.log.wait_for(r"login\?token=(\S+)", 1)).group(1)
        bearer = {"Authorization": f"Bearer {token}"}
        fresh = aiohttp.TCPConnector(force_close=True)  # each request a new connection
        async with aiohttp.ClientSession(connector=fresh, headers=bearer) as console:
            for _ in range(6):  # that the kernel hands to either worker
                async with console.get(f"{w.url}/admin/api/snapshot") as resp:
                    assert resp.status == 200
                    nodes = {n["id"] for n in (await resp.json())["nodes"]}
                assert nodes == set(w.nodes), nodes
    # every process raised its open-files limit and said so: the parent and both workers
    assert sum("open files: limit" in line for line in w.log.lines) == 3, w.log.lines


@pytest.mark.redis
async def test_a_killed_worker_is_replaced_and_its_members_go_offline(
    redis_server: RedisServer,
) -> None:
    """SIGKILL a worker: the parent starts it again with the same node id, and its members
    go offline for the other worker's clients. Then SIGKILL the parent: no worker stays."""
    ttl = 1.5
    env = {"REDIS_URL": redis_server.url, "GOCHAT_PRESENCE_TTL": str(ttl)}
    async with workers(env) as w, aiohttp.ClientSession() as session:
        held = await spread(session, w, 1)
        ((a, _),), ((b, b_id),) = held[w.nodes[0]], held[w.nodes[1]]
        await join(a, "lobby")
        await join(b, "lobby")
        assert (await recv_type(a, "presence"))["userId"] == b_id
        old_pid = await w.pid_of(1)
        mark = len(w.log.lines)

        killed = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)  # a worker of this test's own parent
        off = await recv_type(a, "presence", timeout=ttl + 2)
        gone = time.monotonic() - killed
        assert (off["userId"], off["status"]) == (b_id, "offline"), off
        assert gone <= ttl + 0.5, gone

        await w.log.wait_for(rf"worker 1 exited: pid {old_pid}, .*killed by SIGKILL", 5, mark)
        new_pid = await w.pid_of(1, mark)
        restarted = time.monotonic() - killed
        assert new_pid != old_pid
        assert restarted < 2.5, restarted
        await w.log.wait_for(rf"node {w.nodes[1]} serving on", START, mark)
        again = await spread(session, w, 1)  # the same node id serves again
        assert len(again[w.nodes[1]]) == 1
        await a.send_json({"type": "chat", "room": "lobby", "text": "still", "cid": "c3"})
        assert (await recv_type(a, "chat"))["text"] == "still"

        # The parent dies without a word: no worker outlives it (their stderr, a pipe they
        # share with it, ends only once the last of them has exited).
        mark = len(w.log.lines)
        w.proc.kill()
        assert await expect_close(a, 5) == 1001
        await asyncio.wait_for(w.log.rest(), 5)
    assert sum("the supervisor is gone: shutting down" in ln for ln in w.log.lines[mark:]) == 2
    print(f"offline {gone:.2f}s and worker started again {restarted:.2f}s after SIGKILL")


@pytest.mark.redis
async def test_a_worker_that_does_not_stop_within_the_grace_is_killed(
    redis_server: RedisServer,
) -> None:
    grace = 1.0
    env = {"REDIS_URL": redis_server.url, "GOCHAT_SHUTDOWN_GRACE": str(grace)}
    async with workers(env) as w:
        stuck = await w.pid_of(1)
        os.kill(stuck, signal.SIGSTOP)  # it cannot handle the SIGTERM the parent forwards
        started = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        code, err = await w.exit(grace + 5)
        elapsed = time.monotonic() - started
    assert code == 1, err
    assert f"worker 1 exited: pid {stuck}, node {w.nodes[1]}, killed by SIGKILL" in err, err
    assert f"node {w.nodes[0]}, status 0" in err, err
    assert grace + 1 <= elapsed < grace + 2, elapsed  # the grace and the parent's margin


@pytest.mark.redis
@pytest.mark.parametrize("to", ["parent", "group"])
async def test_sigterm_closes_every_client_1001_and_everything_exits_0(
    redis_server: RedisServer, to: str
) -> None:
    """SIGTERM to the parent alone (a container runtime) or to every process of the group
    at once (a PaaS, which runs the Procfile's line: here with GOCHAT_WORKERS=2). Clients
    are closed one per batch over half the grace, so the forwarded SIGTERM reaches each
    worker of the group case mid-drain: it must not cut the drain."""
    grace = 3.0
    env = {
        "REDIS_URL": redis_server.url,
        "GOCHAT_SHUTDOWN_GRACE": str(grace),
        "GOCHAT_SHUTDOWN_BATCH": "1",
    }
    async with workers(env, procfile=to == "group") as w, aiohttp.ClientSession() as session:
        held = await spread(session, w, 3)
        clients = [ws for node in w.nodes for ws, _ in held[node]]
        mark = len(w.log.lines)
        started = time.monotonic()
        if to == "parent":
            w.proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(w.proc.pid, signal.SIGTERM)
        closes = asyncio.gather(*(expect_close(ws, grace + 2) for ws in clients))
        # Each worker drains (its first line), then gets SIGTERM again mid-drain: in the
        # group case the parent's forwarded one, which may also have merged with the first
        # (the kernel keeps one pending SIGTERM), so the test sends one more of its own.
        await w.log.wait_for(r"gochat: SIGTERM: shutting down", grace, mark, count=2)
        if to == "parent":
            w.proc.send_signal(signal.SIGTERM)
            await w.log.wait_for(r"SIGTERM received: already stopping", grace, mark)
        else:
            for index in range(2):
                os.kill(await w.pid_of(index), signal.SIGTERM)
        codes = await closes
        code, err = await w.exit(grace + 2)
        elapsed = time.monotonic() - started
    assert codes == [1001] * len(clients), codes
    assert code == 0, err
    assert elapsed < grace, elapsed
    for bad in ("Traceback", "Task was destroyed", "Unclosed", "never awaited", "SIGKILL"):
        assert bad not in err, err
    for index, node in enumerate(w.nodes):
        assert f"worker {index} exited: pid" in err and f"node {node}, status 0" in err, err
    assert err.count("gochat: SIGTERM: shutting down") == 2, err  # once per worker
    repeats = err.count("gochat: SIGTERM: already shutting down")
    assert repeats >= 2 if to == "group" else repeats == 0, err


async def test_the_open_files_limit_is_raised_to_the_hard_limit_and_a_low_one_is_named() -> None:
    # a shell lowers both limits, as a stingy service manager would, then runs gochat
    shell = 'ulimit -Sn 1000 && ulimit -Hn 3000 && exec "$0" "$@"'
    node = await Node.start(command=["sh", "-c", shell, *GOCHAT])  # waits for /healthz
    code, err = await node.stop()
    assert code == 0, err
    assert "open files: limit 3000 (soft was 1000, hard 3000)" in err, err
    (warning,) = [ln for ln in err.splitlines() if "WARNING" in ln and "open files" in ln]
    assert "about 2936 connections" in warning and "ulimit -n" in warning, warning
    assert "LimitNOFILE" in warning, warning
