"""Run gochat as a real process: free ports, readiness wait, and clean teardown."""

from __future__ import annotations

import asyncio
import os
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
