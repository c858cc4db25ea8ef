"""Run gochat as a real process: free ports, readiness wait, and clean teardown."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import Mapping

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Node:
    """A gochat process started with `command` (default `python -m gochat`)."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    async def start(
        cls,
        env: Mapping[str, str] | None = None,
        command: list[str] | None = None,
        port: int | None = None,
        ready_path: str = "/healthz",
        timeout: float = 15.0,
    ) -> Node:
        port = port or free_port()
        full_env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", **(env or {})}
        argv = command or [sys.executable, "-m", "gochat"]
        proc = await asyncio.create_subprocess_exec(
            *argv, env=full_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        node = cls(proc, port)
        await node.wait_http(ready_path, timeout)
        return node

    async def wait_http(self, path: str, timeout: float) -> None:
        """Poll `path` until it answers 200; fail early if the process dies."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.returncode is not None:
                    err = await self.proc.stderr.read() if self.proc.stderr else b""
                    raise AssertionError(f"gochat exited {self.proc.returncode}: {err.decode()}")
                try:
                    async with session.get(self.url + path) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if loop.time() > deadline:
                    raise AssertionError(f"{self.url}{path} not ready after {timeout}s")
                await asyncio.sleep(0.05)

    async def stop(
        self, sig: int | None = signal.SIGTERM, timeout: float = 10.0
    ) -> tuple[int, str]:
        """Send `sig` (None: it was sent already), wait for exit; return (code, stderr)."""
        if sig is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            _, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.proc.kill()
            _, err = await self.proc.communicate()
            raise AssertionError(f"gochat did not exit within {timeout}s") from None
        assert self.proc.returncode is not None
        return self.proc.returncode, err.decode(errors="replace")

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.communicate()


class StderrLines:
    """A process's stderr read line by line as it comes, so a test can wait for a line
    (a log line is the event) instead of sleeping."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._grew = asyncio.Event()
        self._reader = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            self._grew.set()
        self.ended = True
        self._grew.set()

    async def wait_for(
        self, pattern: str, timeout: float, start: int = 0, count: int = 1
    ) -> re.Match[str]:
        """The `count`-th line from line `start` on that matches `pattern` (its match),
        waiting up to `timeout` seconds for it; fails with the log's tail if the stream ends
        or time runs out first."""
        regex = re.compile(pattern)
        seen = start
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for line in self.lines[seen:]:
                        if (found := regex.search(line)) and (count := count - 1) == 0:
                            return found
                    seen = len(self.lines)
                    if self.ended:
                        break
                    self._grew.clear()
                    await self._grew.wait()
        except TimeoutError:
            pass
        tail = "\n".join(self.lines[-30:])
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{tail}")

    async def rest(self) -> str:
        """Everything, once the stream has ended (the process and its children exited)."""
        await self._reader
        return "\n".join(self.lines)
