"""S8, connections per process: one gochat process (in memory) holding 5,000, 10,000 and
19,000 idle connections, what each costs, and whether a busy room and the console still
answer among them.

    .venv/bin/python bench/conn_scale.py [--sizes 5000,10000,19000] [--idle 55]
    .venv/bin/python bench/run.py --scenario S8          # the same, as a scenario

For each size a fresh gochat process (in-memory broker, the default 25 s heartbeat, the
settings of `bench/run.py`) starts pinned to core 0 with a soft open-files limit of 1024 and
the machine's hard one (`--server-soft-nofile`), as from a default shell: gochat raises the
soft limit to the hard one itself at start, and /proc/<pid>/limits and its log line are
reported (this process and the load generators run at the hard limit). Then:

1. **connect**: `--workers` load-generator processes, pinned to core 1, each open their share
   of the connections (client i in worker i mod W, at most `--concurrency` handshakes in
   flight in all) from source address 127.0.0.(2 + i mod 250), so that no address runs out
   of ephemeral ports; each joins room `r<i // 10>` (rooms of 10, as S3).
2. **memory**: the server's Rss and Pss from /proc/<pid>/smaps_rollup before the first
   connection, and after the connections (the larger of after setup and after the idle
   window), per connection; over the sizes, a least-squares slope (KB per added
   connection), and between consecutive sizes.
3. **idle**: nothing is sent for `--idle` s (at least two heartbeat periods): the server's
   CPU (utime + stime from /proc/<pid>/stat) over the window. The clients answer the
   server's pings, as browsers do.
4. **chat**: 1,000 of the connections (every size/1000-th) join room `big`; once the
   presence flood is over, one of them sends `--chats` chats at `--chat-rate` msg/s, and
   every member times its receipt of each (send time in the text: one machine, one clock):
   p50/p99/max over all deliveries, as read by the load generator and as the kernel
   received them on the member's socket (`EagerReader`), and loss, duplicates, order.
5. **snapshot**: `GET /admin/api/snapshot` with the console's bearer token, `--snapshots`
   times one after the other: wall time of each, median and max.

Output: one JSON line per size (`"kind": "scale"`) and one for the fit (`"kind":
"scale_fit"`) on stdout, the Markdown table and the goals on stderr. Numbers go in
docs/performance.md; what they mean for bigger processes, in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import re
import resource
import secrets
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SELF = Path(__file__).resolve()
REPO = SELF.parent.parent
if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(REPO))

from bench import loadgen  # noqa: E402
from bench import run as bench_run  # noqa: E402

SIZES = (5000, 10000, 19000)
IDLE_S = 55.0  # > two heartbeat periods of the default 25 s
MEMBERS = 1000  # of the big room
ROOM_SIZE = 10  # the other rooms
BIG_ROOM = "big"
SOURCES = 250  # source addresses 127.0.0.2 .. 127.0.0.251
GOALS = {"kb_per_conn": 15.0, "idle_cpu_pct": 3.0, "chat_p99_ms": 20.0, "snapshot_ms": 200.0}
GOAL_SIZE = 19000


def log(msg: str) -> None:
    print(f"[S8 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def smaps_rollup_kb(pid: int) -> dict[str, int]:
    """Rss, Pss, Private_Dirty... of a process in KiB, from /proc/<pid>/smaps_rollup."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == b"kB":
                out[parts[0].rstrip(b":").decode()] = int(parts[1])
    return out


def open_files_limit(pid: int) -> str:
    """`soft/hard` of "Max open files" in /proc/<pid>/limits."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    return "?"


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def source_address(idx: int) -> str:
    return f"127.0.0.{2 + idx % SOURCES}"


def big_members(size: int, members: int = MEMBERS) -> list[int]:
    """Indices of the big room's members: every (size // members)-th connection, so they are
    spread over the workers and source addresses; index 0, the publisher, among them."""
    stride = max(1, size // members)
    return list(range(0, size, stride))[:members]


def raise_nofile() -> tuple[int, int]:
    """This process's soft open-files limit up to the hard one (children inherit it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


@contextlib.contextmanager
def soft_nofile(soft: int) -> Iterator[None]:
    """This process's soft open-files limit lowered to `soft` (0: left alone) while a child
    starts, so that it inherits that, as from a default shell (1024); restored after."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, old[1]), old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def _sysctl(name: str) -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/sys", *name.split(".")).read_text().split())
    return "?"


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return {
        "kind": "machine",
        "scenario": "S8",
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
        "nofile": "/".join(map(str, resource.getrlimit(resource.RLIMIT_NOFILE))),
        "sysctl": {
            k: _sysctl(k)
            for k in (
                "net.core.somaxconn",
                "net.ipv4.tcp_max_syn_backlog",
                "net.ipv4.ip_local_port_range",
                "fs.file-max",
                "fs.nr_open",
                "net.ipv4.tcp_mem",
                "net.ipv4.tcp_rmem",
                "net.ipv4.tcp_wmem",
            )
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --------------------------------------------------------------------------- the workers


# SO_TIMESTAMPNS in <asm-generic/socket.h> (SCM_TIMESTAMPNS, the message, has the same
# number); Python's socket module does not name it.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_SENT = re.compile(rb"seq=\d+;p=\d+;t=(\d+);")  # the send time in a chat text (loadgen)


class EagerReader:
    """Reads the given clients as soon as data arrives, all of them from one loop callback,
    and notes when the kernel received each read's bytes.

    asyncio makes a callback per readable socket; when one chat reaches 1,000 members at
    once, that is 1,000 callbacks, and the last member's receipt waits for all of them. Here
    their transports stop reading (`pause_reading`), their sockets go into one epoll set
    whose own descriptor the loop watches, and one callback reads every socket that is ready
    (as `loadgen.Sweeper` does, but on arrival instead of every 50 ms).

    Two receipt times per chat: when this process read it (`Run.lat_ns`, through the
    client's own accounting, as every scenario measures), and when the kernel queued it on
    the member's socket (SO_TIMESTAMPNS; on loopback that is during the server's `send`),
    which no delay of the load generator's own can stretch. A read of several chats carries
    the time of its last segment, so theirs is an upper bound."""

    def __init__(self, clients: Sequence[loadgen.Client]) -> None:
        self._loop = asyncio.get_running_loop()
        self._epoll = select.epoll()
        self._by_fd: dict[int, tuple[loadgen.Client, socket.socket]] = {}
        for c in clients:
            if c.transport is None or c.transport.is_closing():
                continue
            fd = c.transport.get_extra_info("socket").fileno()
            sock = socket.socket(fileno=os.dup(fd))  # a plain socket for recvmsg
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            c.transport.pause_reading()
            self._epoll.register(fd, select.EPOLLIN)
            self._by_fd[fd] = (c, sock)
        # the kernel stamps in CLOCK_REALTIME, the publisher in CLOCK_MONOTONIC
        self._offset_ns = time.time_ns() - time.monotonic_ns()
        self._cmsg = socket.CMSG_SPACE(_TIMESPEC.size)
        self.arrival_ns: list[int] = []  # per chat received: kernel arrival - send time
        self.unstamped = 0  # reads without a timestamp
        self.wakeups = self.reads = 0
        self._loop.add_reader(self._epoll.fileno(), self._ready)

    def _ready(self) -> None:
        self.wakeups += 1
        for fd, _ in self._epoll.poll(0):
            entry = self._by_fd.get(fd)
            if entry is None or entry[0].transport is None or entry[0].transport.is_closing():
                self._release(fd)
                continue
            c, sock = entry
            try:
                data, anc, _, _ = sock.recvmsg(loadgen.READ_SIZE, self._cmsg)
            except BlockingIOError:
                continue
            except OSError:
                data, anc = b"", []
            if not data:  # EOF or reset: back to asyncio, which closes it
                self._release(fd)
                if c.transport is not None:
                    c.transport.resume_reading()
                continue
            self.reads += 1
            c.data_received(data)  # counts, checks order, times the read
            stamp = next(
                (d for lvl, t, d in anc if lvl == socket.SOL_SOCKET and t == SO_TIMESTAMPNS), None
            )
            if stamp is None:
                self.unstamped += 1
                continue
            sec, nsec = _TIMESPEC.unpack_from(stamp)
            arrived = sec * 1_000_000_000 + nsec - self._offset_ns
            self.arrival_ns.extend(arrived - int(t) for t in _SENT.findall(data))

    def _release(self, fd: int) -> None:
        entry = self._by_fd.pop(fd, None)
        if entry is not None:
            entry[1].close()
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def close(self) -> None:
        self._loop.remove_reader(self._epoll.fileno())
        for fd, (c, _) in list(self._by_fd.items()):
            self._release(fd)
            if c.transport is not None and not c.transport.is_closing():
                c.transport.resume_reading()
        self._epoll.close()


class Worker:
    """One load-generator process: its share of the connections, driven by JSON commands on
    stdin (one per line), each answered with one JSON line on stdout."""

    def __init__(self) -> None:
        self.run = loadgen.Run()
        self.by_idx: dict[int, loadgen.Client] = {}
        self.members: list[loadgen.Client] = []
        self.reader: EagerReader | None = None

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["cmd"]
        if op == "connect":
            return await self.connect(cmd)
        if op == "join":
            return await self.join_big(cmd)
        if op == "arm":
            return self.arm(cmd["total"])
        if op == "publish":
            return await self.publish(cmd)
        if op == "collect":
            return await self.collect(cmd["timeout"])
        if op == "stats":
            return self.stats()
        raise ValueError(f"unknown command {op!r}")

    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open a connection for each index, from its source address, and join its room."""
        target = loadgen.Target(cmd["host"], cmd["port"], "/ws")
        sem = asyncio.Semaphore(cmd["concurrency"])
        run = self.run
        t0 = time.monotonic()

        async def one(idx: int) -> None:
            async with sem:
                _, client = await run.loop.create_connection(
                    lambda: loadgen.Client(run, idx, target, probe=False),
                    target.host,
                    target.port,
                    local_addr=(source_address(idx), 0),
                )
                await asyncio.wait_for(client.welcome, 60)
            await asyncio.wait_for(client.join(f"r{idx // ROOM_SIZE}"), 60)
            self.by_idx[idx] = client

        results = await asyncio.gather(*(one(i) for i in cmd["indices"]), return_exceptions=True)
        failed = [bench_run.describe(r) for r in results if isinstance(r, BaseException)]
        loadgen.freeze_gc()
        return {
            "connected": len(self.by_idx),
            "failed": len(failed),
            "failures": sorted(set(failed))[:5],
            "setup_s": round(time.monotonic() - t0, 2),
        }

    async def join_big(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.members = [self.by_idx[i] for i in cmd["indices"] if i in self.by_idx]
        sem = asyncio.Semaphore(256)

        async def one(c: loadgen.Client) -> None:
            async with sem:
                await asyncio.wait_for(c.join(cmd["room"]), 120)

        results = await asyncio.gather(*(one(c) for c in self.members), return_exceptions=True)
        failed = [bench_run.describe(r) for r in results if isinstance(r, BaseException)]
        return {"joined": len(self.members) - len(failed), "failures": sorted(set(failed))[:5]}

    def arm(self, total: int) -> dict[str, Any]:
        """Every member of the big room expects chats 0..total-1 from publisher 0 and times
        each receipt."""
        for c in self.members:
            c.probe = True
            c.expect({0: total - 1})
        self.run.lat_sent.clear()
        self.run.lat_ns.clear()
        self.run.done = 0
        self.run.all_done.clear()
        self.run.expect_done(len(self.members))
        self.reader = EagerReader(self.members)
        return {"armed": len(self.members)}

    async def publish(self, cmd: dict[str, Any]) -> dict[str, Any]:
        pub = self.by_idx[cmd["idx"]]
        room, total, rate = cmd["room"], cmd["total"], cmd["rate"]
        loop = self.run.loop
        start = loop.time()
        for k in range(total):
            await asyncio.sleep(max(0.0, start + k / rate - loop.time()))
            pub.write(loadgen.chat_frame(room, k, 0, time.monotonic_ns()))
        return {"sent": total, "publish_s": round(loop.time() - start, 2)}

    async def collect(self, timeout: float) -> dict[str, Any]:
        drained = await loadgen._drain(self.run, timeout)
        arrival: list[int] = []
        unstamped = wakeups = reads = 0
        if (reader := self.reader) is not None:
            reader.close()
            arrival, unstamped = reader.arrival_ns, reader.unstamped
            wakeups, reads = reader.wakeups, reader.reads
            self.reader = None
        return (
            {
                "drained": drained,
                "lat_us": [v // 1000 for v in self.run.lat_ns],
                "sent_us": [v // 1000 for v in self.run.lat_sent],
                "arrival_us": [v // 1000 for v in arrival],
                "unstamped": unstamped,
                "wakeups": wakeups,
                "reads": reads,
            }
            | loadgen._stream_totals(self.members)
            | self.stats()
        )

    def stats(self) -> dict[str, Any]:
        run = self.run
        live = sum(
            1 for c in run.clients if c.transport is not None and not c.transport.is_closing()
        )
        return {"open": live, "presence": run.presence} | loadgen._health(run)


async def worker_main() -> None:
    """`conn_scale.py --worker`: serve commands from stdin until it closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    worker = Worker()
    try:
        while line := await reader.readline():
            try:
                reply = await worker.handle(json.loads(line))
            except Exception as exc:
                reply = {"error": bench_run.describe(exc)}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        worker.run.teardown()


@dataclass
class WorkerProc:
    """The orchestrator's end of one worker."""

    child: bench_run.Child

    async def ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        proc = self.child.proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await proc.stdin.drain()
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.child.name} exited:\n{self.child.log_tail()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.child.name}: {reply['error']}")
        return reply


async def start_worker(k: int, logdir: Path, core: int | None) -> WorkerProc:
    log_path = logdir / f"loadgen-{k}.log"
    log_file = open(log_path, "wb")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SELF),
            "--worker",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            cwd=REPO,
            preexec_fn=functools.partial(bench_run._child_setup, core),
            start_new_session=True,
            limit=2**26,  # a collect reply carries every latency
        )
    except BaseException:
        log_file.close()
        raise
    child = bench_run.Child(f"loadgen-{k}", proc, log_path, log_file)
    bench_run._LIVE[child.pid] = child
    return WorkerProc(child)


# --------------------------------------------------------------------------- one size


@dataclass
class Options:
    logdir: Path
    pin: bool = True
    sizes: list[int] = field(default_factory=lambda: list(SIZES))
    idle: float = IDLE_S
    workers: int = 4  # load-generator processes
    concurrency: int = 128  # handshakes in flight in all: aiohttp's listen backlog is 128
    chats: int = 200
    chat_rate: float = 20.0
    snapshots: int = 10
    server_soft_nofile: int = 1024  # the server starts with it (0: the hard limit)


async def wait_quiet(pid: int, util: float = 0.05, span: float = 1.0, timeout: float = 60) -> float:
    """Wait until the server used less than `util` of a core over `span` s (the join flood is
    over); returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        c0 = loadgen.proc_cpu_s(pid)
        await asyncio.sleep(span)
        if loadgen.proc_cpu_s(pid) - c0 < util * span:
            break
    return round(time.monotonic() - t0, 1)


async def snapshot_times(port: int, token: str, n: int) -> dict[str, Any]:
    """`n` requests for the console snapshot, one after the other: ms each, and the size."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/admin/api/snapshot"
    ms: list[float] = []
    size = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            async with http.get(url) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"snapshot: HTTP {resp.status}: {body[:200]!r}")
            ms.append((time.perf_counter() - t0) * 1e3)
            size = len(body)
            await asyncio.sleep(0.2)
    return {
        "snapshot_ms": {
            "median": round(statistics.median(ms), 1),
            "max": round(max(ms), 1),
            "first": round(ms[0], 1),
        },
        "snapshot_requests": n,
        "snapshot_bytes": size,
    }


async def measure_size(o: Options, size: int) -> dict[str, Any]:
    core = bench_run.SERVER_CORE if o.pin else None
    wcore = bench_run.LOADGEN_CORE if o.pin else None
    token = secrets.token_hex(16)
    out: dict[str, Any] = {"kind": "scale", "scenario": "S8", "server": "gochat", "size": size}
    out["loadavg_start"] = list(os.getloadavg())
    async with contextlib.AsyncExitStack() as stack:
        # gochat raises its soft open-files limit to the hard one at start: it starts with a
        # low one here, and /proc/<pid>/limits shows whether it did
        with soft_nofile(o.server_soft_nofile):
            d = await stack.enter_async_context(
                bench_run.deploy("gochat", o.logdir, core, env={"GOCHAT_ADMIN_TOKEN": token})
            )
        pid = d.pids[0]
        port = int(d.urls[0].rsplit(":", 1)[1].split("/")[0])
        out["server_nofile_at_exec"] = o.server_soft_nofile or "hard"
        out["server_nofile"] = open_files_limit(pid)
        said = [ln for ln in d.children[-1].log_tail(50).splitlines() if "open files" in ln]
        out["server_nofile_log"] = said[0].split(": ", 1)[-1] if said else None
        mem0 = smaps_rollup_kb(pid)
        workers: list[WorkerProc] = []
        try:
            for k in range(o.workers):
                workers.append(await start_worker(k, o.logdir, wcore))
            wpids = [w.child.pid for w in workers]

            # 1. connect
            t0 = time.monotonic()
            per = max(1, o.concurrency // o.workers)
            replies = await asyncio.gather(
                *(
                    w.ask(
                        {
                            "cmd": "connect",
                            "host": "127.0.0.1",
                            "port": port,
                            "indices": list(range(k, size, o.workers)),
                            "concurrency": per,
                        }
                    )
                    for k, w in enumerate(workers)
                )
            )
            out["connected"] = sum(r["connected"] for r in replies)
            out["connect_failed"] = sum(r["failed"] for r in replies)
            if out["connect_failed"]:
                out["connect_failures"] = sorted({f for r in replies for f in r["failures"]})[:5]
            out["setup_s"] = round(time.monotonic() - t0, 1)
            out["quiet_wait_s"] = await wait_quiet(pid)
            out["server_fds"] = open_fds(pid)
            mem1 = smaps_rollup_kb(pid)
            log(f"{size}: {out['connected']} connected in {out['setup_s']} s; idle {o.idle:g} s")

            # 2, 3. idle window
            busy0, cpu0 = loadgen.machine_busy_s(), loadgen.proc_user_sys_s(pid)
            wcpu0, t_0 = sum(map(loadgen.proc_cpu_s, wpids)), time.monotonic()
            await asyncio.sleep(o.idle)
            busy1, cpu1 = loadgen.machine_busy_s(), loadgen.proc_user_sys_s(pid)
            wcpu1, t_1 = sum(map(loadgen.proc_cpu_s, wpids)), time.monotonic()
            mem2 = smaps_rollup_kb(pid)
            wall = t_1 - t_0
            server_cpu = sum(cpu1) - sum(cpu0)
            stats = await asyncio.gather(*(w.ask({"cmd": "stats"}) for w in workers))
            out |= {
                "idle_s": round(wall, 1),
                "idle_cpu_s": round(server_cpu, 2),
                "idle_cpu_pct": round(100 * server_cpu / wall, 2),
                "idle_sys_share": round((cpu1[1] - cpu0[1]) / server_cpu, 2)
                if server_cpu
                else None,
                "loadgen_idle_cpu_s": round(wcpu1 - wcpu0, 2),
                "open_after_idle": sum(s["open"] for s in stats),
                "closed_during_idle": sum(s["closed"] for s in stats),
            }
            out |= loadgen.others(busy1 - busy0, server_cpu + wcpu1 - wcpu0, wall)
            out["rss_setup_mb"] = round(mem1.get("Rss", 0) / 1024, 1)
            out["rss_idle_mb"] = round(mem2.get("Rss", 0) / 1024, 1)
            for key in ("Rss", "Pss"):
                base, grown = mem0.get(key, 0), max(mem1.get(key, 0), mem2.get(key, 0))
                out[f"{key.lower()}_base_mb"] = round(base / 1024, 1)
                out[f"{key.lower()}_mb"] = round(grown / 1024, 1)
                out[f"{key.lower()}_delta_kb"] = grown - base
                out[f"{key.lower()}_per_conn_kb"] = round((grown - base) / size, 2)

            # 4. chat into the big room
            members = big_members(size)
            mine = [[i for i in members if i % o.workers == k] for k in range(o.workers)]
            t0 = time.monotonic()
            joins = await asyncio.gather(
                *(
                    w.ask({"cmd": "join", "room": BIG_ROOM, "indices": mine[k]})
                    for k, w in enumerate(workers)
                )
            )
            out["big_room_joined"] = sum(r["joined"] for r in joins)
            out["big_join_s"] = round(time.monotonic() - t0, 1)
            out["big_quiet_wait_s"] = await wait_quiet(pid)
            await asyncio.gather(*(w.ask({"cmd": "arm", "total": o.chats}) for w in workers))
            c0, busy0 = loadgen.proc_cpu_s(pid), loadgen.machine_busy_s()
            wcpu0, t_0 = sum(map(loadgen.proc_cpu_s, wpids)), time.monotonic()
            wsys0 = sum(loadgen.proc_user_sys_s(p)[1] for p in wpids)
            pub = await workers[0].ask(
                {
                    "cmd": "publish",
                    "idx": 0,
                    "room": BIG_ROOM,
                    "total": o.chats,
                    "rate": o.chat_rate,
                }
            )
            got = await asyncio.gather(
                *(w.ask({"cmd": "collect", "timeout": 30.0}) for w in workers)
            )
            chat_cpu = loadgen.proc_cpu_s(pid) - c0
            wcpu = sum(map(loadgen.proc_cpu_s, wpids)) - wcpu0
            wsys = sum(loadgen.proc_user_sys_s(p)[1] for p in wpids) - wsys0
            wall = time.monotonic() - t_0
            lat = sorted(v / 1e3 for r in got for v in r["lat_us"])
            arrival = sorted(v / 1e3 for r in got for v in r["arrival_us"])
            # each chat's first and last receipt among the members: the fan-out's spread
            first: dict[int, float] = {}
            last: dict[int, float] = {}
            for r in got:
                for sent, v in zip(r["sent_us"], r["lat_us"], strict=True):
                    ms = v / 1e3
                    first[sent] = min(first.get(sent, ms), ms)
                    last[sent] = max(last.get(sent, ms), ms)
            firsts, lasts = sorted(first.values()), sorted(last.values())
            out |= {
                "chats": o.chats,
                "chat_rate": o.chat_rate,
                "publish_s": pub["publish_s"],
                "chat_server_cpu_s": round(chat_cpu, 2),
                "chat_server_cpu_ms_per_msg": round(1e3 * chat_cpu / o.chats, 2),
                "chat_loadgen_cpu_s": round(wcpu, 2),
                "chat_loadgen_sys_share": round(wsys / wcpu, 2) if wcpu else None,
                "chat_first_receipt_ms_p50": loadgen._r(loadgen.percentile(firsts, 50)),
                "chat_last_receipt_ms": {
                    "p50": loadgen._r(loadgen.percentile(lasts, 50)),
                    "max": loadgen._r(lasts[-1] if lasts else None),
                },
                "chat_other_cpu_util": loadgen.others(
                    loadgen.machine_busy_s() - busy0, chat_cpu + wcpu, wall
                )["other_cpu_util"],
                "chat_ms": {
                    "p50": loadgen._r(loadgen.percentile(lat, 50)),
                    "p99": loadgen._r(loadgen.percentile(lat, 99)),
                    "max": loadgen._r(lat[-1] if lat else None),
                },
                "chat_samples": len(lat),
                "chat_arrival_ms": {
                    "p50": loadgen._r(loadgen.percentile(arrival, 50)),
                    "p99": loadgen._r(loadgen.percentile(arrival, 99)),
                    "max": loadgen._r(arrival[-1] if arrival else None),
                },
                "chat_arrival_samples": len(arrival),
                "chat_unstamped_reads": sum(r["unstamped"] for r in got),
                "chat_loadgen_reads_per_wakeup": round(
                    sum(r["reads"] for r in got) / max(1, sum(r["wakeups"] for r in got)), 2
                ),
                "chat_drained": all(r["drained"] for r in got),
            }
            for key in ("expected_deliveries", "deliveries", "lost", "undelivered"):
                out[f"chat_{key}"] = sum(r[key] for r in got)
            out["chat_duplicates"] = sum(r["duplicates"] for r in got)
            out["chat_reordered"] = sum(r["reordered"] for r in got)
            out["closed"] = sum(r["closed"] for r in got)
            codes: dict[str, int] = {}
            for r in got:
                for code, n in r["close_codes"].items():
                    codes[code] = codes.get(code, 0) + n
            out["close_codes"] = codes
            out["errors"] = {k: v for r in got for k, v in r["errors"].items()}

            # 5. the console's snapshot
            out |= await snapshot_times(port, token, o.snapshots)
            out["server_rss_end_mb"] = round(smaps_rollup_kb(pid).get("Rss", 0) / 1024, 1)
        finally:
            for w in workers:
                if w.child.proc.stdin is not None:
                    w.child.proc.stdin.close()
            for w in workers:
                await bench_run.stop(w.child)
    out["loadavg_end"] = list(os.getloadavg())
    return out


def fit(points: Sequence[tuple[int, float]]) -> dict[str, float | None]:
    """Least squares y = slope * x + intercept, and R²."""
    if len(points) < 2:
        return {"slope": None, "intercept": None, "r2": None}
    xs, ys = [float(x) for x, _ in points], [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys, strict=True))
    return {
        "slope": round(slope, 3),
        "intercept": round(intercept, 1),
        "r2": round(1 - ss_res / ss_tot, 5) if ss_tot else None,
    }


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The fit over the sizes (KB of Rss/Pss against connections) and the goals, judged at
    the largest size measured (GOAL_SIZE in a full run)."""
    ok = [r for r in rows if "error" not in r]
    out: dict[str, Any] = {"kind": "scale_fit", "scenario": "S8", "server": "gochat"}
    for key in ("rss", "pss"):
        f = fit([(r["size"], float(r[f"{key}_delta_kb"])) for r in ok])
        out[f"{key}_slope_kb"] = f["slope"]
        out[f"{key}_intercept_kb"] = f["intercept"]
        out[f"{key}_r2"] = f["r2"]
    if not ok:
        return out
    top = max(ok, key=lambda r: r["size"])
    snap = top["snapshot_ms"]
    whole = (
        top["big_room_joined"] == min(MEMBERS, top["size"])
        and top["chat_lost"] + top["chat_undelivered"] + top["chat_duplicates"] == 0
    )
    read_p99, arrival_p99 = top["chat_ms"]["p99"], top["chat_arrival_ms"]["p99"]
    out["goal_size"] = top["size"]
    out["goals"] = {
        "kb_per_conn": [top["rss_per_conn_kb"], top["rss_per_conn_kb"] <= GOALS["kb_per_conn"]],
        "idle_cpu_pct": [
            top["idle_cpu_pct"],
            top["idle_cpu_pct"] <= GOALS["idle_cpu_pct"] and top["idle_s"] >= 50,
        ],
        "chat_p99_ms": [
            read_p99,
            whole and read_p99 is not None and read_p99 <= GOALS["chat_p99_ms"],
        ],
        "chat_arrival_p99_ms": [
            arrival_p99,
            whole and arrival_p99 is not None and arrival_p99 <= GOALS["chat_p99_ms"],
        ],
        "snapshot_ms": [[snap["median"], snap["max"]], snap["max"] <= GOALS["snapshot_ms"]],
    }
    return out


def _f(val: Any, digits: int = 1) -> str:
    if val is None:
        return "–"
    if isinstance(val, float):
        return f"{val:,.{digits}f}"
    if isinstance(val, int):
        return f"{val:,}"
    return str(val)


def _notes(r: dict[str, Any]) -> str:
    notes = []
    if r.get("noisy"):
        notes.append(f"noisy: other work {r['other_cpu_util']} core while idle")
    if (r.get("chat_other_cpu_util") or 0) >= loadgen.NOISY_UTIL:
        notes.append(f"other work {r['chat_other_cpu_util']} core during the chat")
    if r.get("connect_failed"):
        notes.append(f"{r['connect_failed']} connects failed")
    if r.get("closed_during_idle") or r.get("closed"):
        notes.append(f"closed {r.get('close_codes')}")
    if r.get("errors"):
        notes.append(f"errors {r['errors']}")
    if not r.get("chat_drained"):
        notes.append("chat not drained")
    notes.append(f"load {r['loadavg_start'][0]:.2f}")
    return ", ".join(notes)


def render(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The Markdown table of the sizes, the fit, and the goals."""
    lines = [
        "| connections | RSS MB | KB/conn RSS | KB/conn PSS | slope KB/conn | idle CPU "
        "| chat p50 / p99 / max ms, read | chat p50 / p99 ms, kernel arrival | chat lost "
        "| snapshot ms median / max | notes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    prev: dict[str, Any] | None = None
    for r in sorted(rows, key=lambda r: r["size"]):
        if "error" in r:
            lines.append(f"| {r['size']:,} | " + " | ".join(["–"] * 9) + f" | {r['error']} |")
            continue
        slope = None  # from the previous size: the cost of the connections added
        if prev is not None:
            slope = (r["rss_delta_kb"] - prev["rss_delta_kb"]) / (r["size"] - prev["size"])
        read, arr, snap = r["chat_ms"], r["chat_arrival_ms"], r["snapshot_ms"]
        lost = r["chat_lost"] + r["chat_undelivered"]
        lines.append(
            f"| {r['size']:,} | {_f(r['rss_mb'])} | {_f(r['rss_per_conn_kb'], 2)} "
            f"| {_f(r['pss_per_conn_kb'], 2)} | {_f(slope, 2)} "
            f"| {r['idle_cpu_pct']:.2f}% of {r['idle_s']:.0f} s "
            f"| {_f(read['p50'], 2)} / {_f(read['p99'], 2)} / {_f(read['max'], 2)} "
            f"| {_f(arr['p50'], 2)} / {_f(arr['p99'], 2)} | {lost} "
            f"| {_f(snap['median'])} / {_f(snap['max'])} | {_notes(r)} |"
        )
        prev = r
    out = "\n".join(lines) + "\n"
    if summary.get("rss_slope_kb") is not None:
        out += (
            f"\nLeast squares over the sizes: RSS grows {summary['rss_slope_kb']:.2f} KB per "
            f"connection (intercept {summary['rss_intercept_kb'] / 1024:.1f} MB, "
            f"R² {summary['rss_r2']}); PSS {summary['pss_slope_kb']:.2f} KB "
            f"(R² {summary['pss_r2']}).\n"
        )
    goals = summary.get("goals")
    if goals:
        size = summary["goal_size"]
        note = (
            "" if size == GOAL_SIZE else f" (the largest measured; the goals are for {GOAL_SIZE:,})"
        )
        kb, cpu, p99, arr99, snap = (
            goals[k]
            for k in (
                "kb_per_conn",
                "idle_cpu_pct",
                "chat_p99_ms",
                "chat_arrival_p99_ms",
                "snapshot_ms",
            )
        )

        def met(ok: bool) -> str:
            return "met" if ok else "NOT met"

        out += (
            f"\nGoals at {size:,} connections{note}:\n"
            f"- memory {kb[0]} KB/conn of RSS (goal ≤ {GOALS['kb_per_conn']:g}): {met(kb[1])}\n"
            f"- idle CPU {cpu[0]}% over ≥ 50 s (goal ≤ {GOALS['idle_cpu_pct']:g}%): {met(cpu[1])}\n"
            f"- chat into {MEMBERS:,} members, nothing lost, p99 ≤ {GOALS['chat_p99_ms']:g} ms: "
            f"{met(p99[1])} as read by the load generator ({p99[0]} ms), {met(arr99[1])} at "
            f"the members' sockets (kernel arrival, {arr99[0]} ms)\n"
            f"- snapshot median {snap[0][0]} ms, max {snap[0][1]} ms (goal ≤ "
            f"{GOALS['snapshot_ms']:g}): {met(snap[1])}\n"
        )
    return out


async def run_s8(
    o: Options, emit: Callable[[dict[str, Any]], None]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every size in turn (each with a hard time limit; a failure is a line with `error`),
    then the fit; every line handed to `emit`."""
    rows = []
    for size in o.sizes:
        log(f"{size} connections, {o.workers} load-generator processes")
        budget = 420 + o.idle + o.chats / o.chat_rate
        try:
            row = await asyncio.wait_for(measure_size(o, size), budget)
        except Exception as exc:
            row = {"kind": "scale", "scenario": "S8", "server": "gochat", "size": size}
            row["error"] = bench_run.describe(exc)[:2000]
        rows.append(row)
        emit(row)
    summary = summarise(rows)
    emit(summary)
    return rows, summary


async def run_scenario(
    logdir: Path, pin: bool, idle: float, emit: Callable[[dict[str, Any]], None]
) -> int:
    """S8 as a scenario of bench/run.py (`--scenario S8`), with the default sizes and an idle
    window of `idle` s but at least IDLE_S (run.py's --idle is S3's, 5 s by default): its
    lines to `emit`, the table to stderr; returns how many sizes failed."""
    raise_nofile()  # the load generators inherit it
    emit(machine() | {"pinned": pin})
    o = Options(logdir=logdir, pin=pin, idle=max(idle, IDLE_S))
    rows, summary = await run_s8(o, emit)
    print("\n" + render(rows, summary), file=sys.stderr, flush=True)
    return sum("error" in r for r in rows)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="connections, comma-separated"
    )
    p.add_argument("--idle", type=float, default=IDLE_S, help="idle window, s (>= 50 for the goal)")
    p.add_argument("--workers", type=int, default=Options.workers, help="load-generator processes")
    p.add_argument(
        "--concurrency", type=int, default=Options.concurrency, help="handshakes in flight in all"
    )
    p.add_argument("--chats", type=int, default=Options.chats, help="chats into the big room")
    p.add_argument("--chat-rate", type=float, default=Options.chat_rate, help="their rate, msg/s")
    p.add_argument(
        "--snapshots", type=int, default=Options.snapshots, help="console snapshot requests"
    )
    p.add_argument(
        "--server-soft-nofile",
        type=int,
        default=Options.server_soft_nofile,
        help="soft open-files limit the server is started with (0: the hard limit)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin server and load generator")
    p.add_argument("--logs", type=Path, help="keep server and worker logs here")
    p.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        asyncio.run(worker_main())
        return 0
    soft, hard = raise_nofile()
    pin = not args.no_pin and {
        bench_run.SERVER_CORE,
        bench_run.LOADGEN_CORE,
    } <= os.sched_getaffinity(0)
    if pin:
        os.sched_setaffinity(0, {bench_run.LOADGEN_CORE})
    out = open(args.out, "a") if args.out else None

    def emit(line: dict[str, Any]) -> None:
        text = json.dumps(line)
        print(text, flush=True)
        if out is not None:
            out.write(text + "\n")
            out.flush()

    with contextlib.ExitStack() as stack:
        if out is not None:
            stack.callback(out.close)
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            logdir = args.logs
        else:
            logdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gochat-s8-")))
        o = Options(
            logdir=logdir,
            pin=pin,
            sizes=[int(s) for s in args.sizes.split(",") if s.strip()],
            idle=args.idle,
            workers=args.workers,
            concurrency=args.concurrency,
            chats=args.chats,
            chat_rate=args.chat_rate,
            snapshots=args.snapshots,
            server_soft_nofile=args.server_soft_nofile,
        )
        emit(machine() | {"pinned": pin, "nofile": f"{soft}/{hard}"})
        rows, summary = asyncio.run(run_s8(o, emit))
        print("\n" + render(rows, summary), file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
