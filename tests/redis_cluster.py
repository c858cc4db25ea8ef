"""A throwaway Redis Cluster: 3 masters and 3 replicas of redis-server on free ports.

Created with `redis-cli --cluster create ... --cluster-replicas 1`, without persistence,
each node's cluster config in a temporary folder. A test may SIGKILL a master and wait for
its replica to take over (`kill`, `until_failover`). `bench/cluster_fanout.py` (S7) starts one
too, passing `preexec_fn` to pin its processes and have them die with the benchmark.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .procs import free_port
from .redis_server import START_TIMEOUT, _ping

MASTERS = 3
NODE_TIMEOUT_MS = 1000  # how long a silent master is given before its replica takes over
READY_TIMEOUT = 20.0


def _command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """One inline command to 127.0.0.1:port; its raw reply (good enough for INFO and CLUSTER)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(" ".join(args).encode() + b"\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            data += chunk
            if not chunk or _complete(data):
                return data


def _complete(data: bytes) -> bool:
    if data[:1] != b"$":
        return data.endswith(b"\r\n")
    head, _, rest = data.partition(b"\r\n")
    size = int(head[1:])
    return size < 0 or len(rest) >= size + 2


class RedisCluster:
    """Six redis-server processes in cluster mode (3 masters, 3 replicas), on 127.0.0.1."""

    def __init__(self, preexec_fn: Callable[[], object] | None = None) -> None:
        """`preexec_fn` runs in each redis-server before its exec (as `subprocess.Popen`'s)."""
        exe, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if exe is None or cli is None:
            pytest.fail(
                "redis-server and redis-cli are needed for the cluster tests "
                "(apt-get install redis-server)",
                pytrace=False,
            )
        self.exe, self.cli = exe, cli
        self.ports = [free_port() for _ in range(2 * MASTERS)]
        self.dir = Path(tempfile.mkdtemp(prefix="gochat-cluster-"))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.preexec_fn = preexec_fn

    @property
    def url(self) -> str:
        """Any node's URL: gochat finds the others (the first live one here)."""
        port = next(p for p in self.ports if p in self.procs)
        return f"redis://127.0.0.1:{port}/0"

    def _spawn(self, port: int) -> None:
        args = [self.exe, "--port", str(port), "--bind", "127.0.0.1"]
        args += ["--cluster-enabled", "yes", "--cluster-port", str(free_port())]
        args += ["--cluster-config-file", str(self.dir / f"nodes-{port}.conf")]
        args += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
        args += ["--cluster-replica-validity-factor", "0"]  # a replica may always take over
        args += ["--dir", str(self.dir), "--save", "", "--appendonly", "no"]
        args += ["--protected-mode", "no", "--enable-debug-command", "yes"]
        self.procs[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=self.preexec_fn
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(port):
            if self.procs[port].poll() is not None:
                raise RuntimeError(f"redis-server (cluster) exited on {port}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server (cluster) on {port} did not answer PING")
            time.sleep(0.01)

    def start(self) -> None:
        """Start the six servers, create the cluster, wait until every node says ok."""
        for port in self.ports:
            self._spawn(port)
        create = [self.cli, "--cluster", "create"]
        create += [f"127.0.0.1:{p}" for p in self.ports]
        create += ["--cluster-replicas", "1", "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=READY_TIMEOUT)
        self.wait_ok()

    def info(self, port: int) -> dict[str, str]:
        raw = _command(port, "CLUSTER", "INFO").decode(errors="replace")
        pairs = (line.split(":", 1) for line in raw.splitlines() if ":" in line)
        return {k: v.strip() for k, v in pairs}

    def wait_ok(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every live node reports `cluster_state:ok` and knows every node, and every
        replica is in sync with its master."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = [self.info(p) for p in self.procs]
                if (
                    all(s.get("cluster_state") == "ok" for s in states)
                    and all(int(s.get("cluster_known_nodes", 0)) >= len(self.ports) for s in states)
                    and all(self._synced(p) for p in self.procs)
                ):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis cluster not ok after {timeout}s")
            time.sleep(0.05)

    def _synced(self, port: int) -> bool:
        """A master, or a replica whose link to its master is up (its first sync done): a
        replica promoted before that would come up empty."""
        raw = _command(port, "INFO", "replication").decode(errors="replace")
        return "role:master" in raw or "master_link_status:up" in raw

    def masters(self) -> list[int]:
        """The ports of the live masters (CLUSTER NODES from a live node)."""
        port = next(iter(self.procs))
        raw = _command(port, "CLUSTER", "NODES").decode()
        found = []
        for line in raw.splitlines():
            parts = line.split()
            if len(parts) > 2 and "master" in parts[2] and "fail" not in parts[2]:
                found.append(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
        return sorted(p for p in found if p in self.procs)

    def master_of(self, slot: int) -> int:
        """The port of the master that serves `slot` now."""
        port = next(iter(self.procs))
        raw = _command(port, "CLUSTER", "NODES").decode()
        for line in raw.splitlines():
            parts = line.split()
            if len(parts) > 8 and "master" in parts[2] and "fail" not in parts[2]:
                for span in parts[8:]:
                    if span.startswith("["):
                        continue
                    lo, _, hi = span.partition("-")
                    if int(lo) <= slot <= int(hi or lo):
                        return int(parts[1].split("@")[0].rsplit(":", 1)[1])
        raise LookupError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one node: no goodbye, its connections drop at once."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()

    def flush(self) -> None:
        """Empty every master (between tests sharing the cluster)."""
        for port in self.masters():
            _command(port, "FLUSHALL")
            _command(port, "SCRIPT", "FLUSH")

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)
        shutil.rmtree(self.dir, ignore_errors=True)


def key_slot(key: str) -> int:
    """Redis Cluster's hash slot of `key` (CRC16/XMODEM of its hash tag, mod 16384)."""
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % 16384
