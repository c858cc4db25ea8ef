"""A throwaway redis-server on a free port, which a test may kill -9 and start again."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from .procs import free_port

START_TIMEOUT = 5.0


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process without persistence, bound to 127.0.0.1:port."""

    def __init__(self, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail(
                "redis-server is not installed: the Redis tests need it "
                "(apt-get install redis-server; .ci/run installs it)",
                pytrace=False,
            )
        self.exe = exe
        self.port = port if port is not None else free_port()
        self.extra = extra  # more command-line options, e.g. ("--enable-debug-command", "yes")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--protected-mode", "no", *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not answer PING")
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL: no goodbye to any client, every connection drops at once."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
