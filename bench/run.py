"""Run the gochat benchmarks side by side with the naive hub, and print one JSON line per run.

    python bench/run.py                                   # everything (`make bench`)
    python bench/run.py --scenario S1 --rates 50,400 --duration 5 --servers gochat,naive
    python bench/run.py --repeat 3                        # each run 3 times: medians
    python bench/run.py --check                           # the short correctness run

Scenarios (1000 clients in one room unless said; 64-byte texts):
  S1  fan-out: one room, one publisher, at each of --rates msg/s
  S2  many rooms: 200 rooms x 10 clients, every client publishes, --s2-rate msg/s in all
  S3  idle memory: 5000 connections in 500 rooms, then nothing for --idle s
  S4  two gochat nodes through a private Redis: subscribers on both, the publisher on one
  S5  join storm: 1000 connected clients join one room within one second
  S6  S4's work on `gochat --workers 2` (one port, the kernel spreads the clients), then on
      two separately started nodes, one private Redis: the supervisor's cost per message
  API the server API's publish rate: --api-concurrency requests in flight (aiohttp, kept
      alive) posting to a room of --api-members WebSocket clients, then one of them
      publishing the same messages over its WebSocket at the rate the API reached (one
      gochat process, one run: bench/api_publish.py)
  S7  S4 on a 3-master Redis Cluster (+3 replicas) and on one private Redis, side by side,
      with the Redis processes' CPU per delivery; then the same with S2's 200 rooms at
      --s2-rate (bench/cluster_fanout.py; a few minutes, so only when named)
  S8  connections per process: one gochat process at 5,000, 10,000 and 19,000 idle
      connections, a chat into 1,000 of them, the console snapshot (bench/conn_scale.py;
      several minutes, so only when named: not in `all`)

Every server under test runs in its own process, started here for each run and ended after
it, pinned to core 0; this process (the load generator) pins itself to core 1. Lines:
  {"kind": "machine", ...}  once, first: what ran where
  {"kind": "result", "scenario", "server", ...}  one per (scenario, server, rate)
  {"kind": "ratio", "scenario", "a", "b", ...}  a/b of the main figures of two results
  {"kind": "median", ...}, {"kind": "median_ratio", ...}  with --repeat: at the end, the
      median of each result and ratio over the rounds (ratios are taken pair by pair)
docs/performance.md explains the fields and shows the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import functools
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(REPO))

from bench import api_publish, loadgen, report  # noqa: E402

SERVER_CORE, LOADGEN_CORE = 0, 1
RESERVED_PORTS = {8080, 6379}  # never used: a developer's own server and Redis live there
ALL_SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6", "API")
# run only when named: S7 starts a six-process Redis Cluster (about 3.5 min), S8 holds
# 19,000 connections (about 4 min)
NAMED_ONLY = ("S7", "S8")

# Settings of gochat under test: no per-connection rate limit (one client publishes the whole
# offered rate), no per-address cap (every client is 127.0.0.1), and a send buffer that a
# client keeping up never fills (1024 x 4 KiB), so the figures are about fan-out, not limits.
# The first-frame timeout is the setup's budget: the load generator connects every client
# before it joins them, 256 at a time, and in S4 (two nodes and Redis on one core, a
# presence flood) the last joins went out more than the default 10 s after their upgrade.
GOCHAT_ENV = {
    "HOST": "127.0.0.1",
    "GOCHAT_RATE": "0",
    "GOCHAT_MAX_CONN_PER_IP": "0",
    "GOCHAT_MAX_CONNECTIONS": "0",
    "GOCHAT_SEND_BUFFER": "1024",
    "GOCHAT_MAX_ROOMS": "32",
    "GOCHAT_HANDSHAKE_TIMEOUT": "120",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (never 8080 or 6379)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


# --------------------------------------------------------------------------- child processes


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


_LIVE: dict[int, Child] = {}  # every child not yet ended, for the exit handler


@atexit.register
def _kill_leftovers() -> None:
    """Last resort (an exception escaped, ^C): kill the children this process started."""
    for pid, child in list(_LIVE.items()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        child.log_file.close()
        _LIVE.pop(pid, None)


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: used between fork and exec
_PR_SET_PDEATHSIG = 1


def _child_setup(core: int | None) -> None:
    """In the child before exec: die with us (even if we are SIGKILLed), and pin to `core`."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if core is not None:
        os.sched_setaffinity(0, {core})


async def spawn(
    name: str, argv: list[str], env: dict[str, str], logdir: Path, core: int | None
) -> Child:
    """Start a child, its output to logdir/name.log, pinned to `core` when given."""
    log_path = logdir / f"{name}.log"
    log_file = open(log_path, "wb")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            preexec_fn=functools.partial(_child_setup, core),
            # Its own session: a ^C in the terminal reaches only us, and we stop the
            # servers in order (and _child_setup covers our being killed outright).
            start_new_session=True,
        )
    except BaseException:
        log_file.close()
        raise
    child = Child(name, proc, log_path, log_file)
    _LIVE[child.pid] = child
    return child


async def stop(child: Child, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `grace` seconds; always reaped."""
    proc = child.proc
    try:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
    finally:
        child.log_file.close()
        _LIVE.pop(child.pid, None)


async def _ready(child: Child, probe: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Poll `probe` (a /healthz or PING) until it answers, within `timeout`: the child gives no
    other sign that it serves. Attempts are 10 ms apart at first, 100 ms at most."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if child.proc.returncode is not None:
            raise RuntimeError(
                f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}"
            )
        with contextlib.suppress(OSError):
            if await probe():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name} not ready after {timeout}s:\n{child.log_tail()}")
        await asyncio.sleep(delay)
        delay = min(0.1, delay * 2)


async def _http_ok(port: int, path: str) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        return (await reader.readline()).split()[1:2] == [b"200"]
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _redis_ok(port: int) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"PING\r\n")
        return (await reader.readline()).startswith(b"+PONG")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a server under test: ours, less any gochat setting of the caller's
    but GOCHAT_EVENT_LOOP (to compare event loops)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("GOCHAT_") or k == "GOCHAT_EVENT_LOOP")
        and k not in ("REDIS_URL", "PORT", "HOST")
    }
    return env | GOCHAT_ENV | {"GOCHAT_ADMIN_TOKEN": secrets.token_hex(16)} | extra


@dataclass
class Deployment:
    """The processes of one run: the URLs clients use, and whose CPU and memory to measure."""

    urls: list[str]
    pids: list[int]
    aux_pids: dict[str, int] = field(default_factory=dict)
    presence: bool = True  # does this server send presence (the naive hub does not)
    children: list[Child] = field(default_factory=list)


@contextlib.asynccontextmanager
async def deploy(
    kind: str,
    logdir: Path,
    core: int | None,
    nodes: int = 1,
    ready_timeout: float = 30.0,
    env: dict[str, str] | None = None,
    workers: int = 1,
    redis_url: str | None = None,
) -> AsyncIterator[Deployment]:
    """Start `kind` ("gochat", "gochat-public" = gochat with GOCHAT_FAST_PATHS=0, or "naive";
    gochat with nodes=2 adds a private Redis, or uses `redis_url` (S7's cluster: not started
    or ended here); `env`: more settings for gochat), yield it once it serves, and end every
    process of it afterwards, whatever happened."""
    dep = Deployment([], [])
    try:
        if kind == "naive":
            port = free_port()
            argv = [sys.executable, str(REPO / "bench" / "naive_hub.py"), "--port", str(port)]
            child = await spawn("naive", argv, server_env(), logdir, core)
            dep.children.append(child)
            await _ready(child, lambda: _http_ok(port, "/healthz"), ready_timeout)
            dep.urls, dep.pids, dep.presence = [f"ws://127.0.0.1:{port}/ws"], [child.pid], False
        elif kind in ("gochat", "gochat-public"):
            # gochat-public: aiohttp's public API only, to measure what the shortcuts save
            extra = {"GOCHAT_FAST_PATHS": "0"} if kind == "gochat-public" else {}
            extra |= env or {}
            if redis_url is not None:  # a prefix of its own there too
                extra |= {"REDIS_URL": redis_url, "GOCHAT_PREFIX": f"bench{secrets.token_hex(4)}:"}
            elif nodes > 1 or workers > 1:
                redis_bin = shutil.which("redis-server")
                if redis_bin is None:
                    raise RuntimeError("S4 needs redis-server on PATH")
                rport = free_port()
                argv = [
                    redis_bin,
                    "--port",
                    str(rport),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(logdir),
                ]
                redis = await spawn("redis", argv, dict(os.environ), logdir, core)
                dep.children.append(redis)
                await _ready(redis, lambda: _redis_ok(rport), ready_timeout)
                dep.aux_pids["redis"] = redis.pid
                # A prefix of its own, so that nothing else in this Redis is ever touched.
                extra |= {
                    "REDIS_URL": f"redis://127.0.0.1:{rport}/0",
                    "GOCHAT_PREFIX": f"bench{secrets.token_hex(4)}:",
                }
            for n in range(nodes):
                port = free_port()
                env = server_env(GOCHAT_NODE_ID=f"bench-{n}", **extra)
                argv = [sys.executable, "-m", "gochat", "--port", str(port)]
                argv += ["--workers", str(workers)] if workers > 1 else []
                child = await spawn(f"gochat-{n}", argv, env, logdir, core)
                dep.children.append(child)
                if workers > 1:  # S6: the parent logs each worker's pid, each its serving
                    await _ready(child, functools.partial(_serving, child, workers), ready_timeout)
                await _ready(child, functools.partial(_http_ok, port, "/healthz"), ready_timeout)
                if nodes > 1 or workers > 1:  # and its broker is usable
                    await _ready(child, functools.partial(_http_ok, port, "/readyz"), ready_timeout)
                dep.urls.append(f"ws://127.0.0.1:{port}/ws")
                if workers > 1:  # the nodes are the workers; the parent is measured apart
                    dep.pids += [int(p) for p in re.findall(r"started: pid (\d+)", _log(child))]
                    dep.aux_pids["supervisor"] = child.pid
                else:
                    dep.pids.append(child.pid)
        else:
            raise ValueError(f"unknown server {kind!r}")
        yield dep
    finally:
        for child in reversed(dep.children):
            await stop(child)


# --------------------------------------------------------------------------- runs


@dataclass
class Options:
    servers: list[str]
    scenarios: list[str]
    rates: list[float]
    s4_rates: list[float]
    duration: float
    warmup: float
    clients: int
    probes: int
    s2_rate: float
    api_members: int
    api_concurrency: int
    idle: float
    drain: float
    retry_noisy: int
    pin: bool
    logdir: Path


def _meta(scenario: str, server: str, rate: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "result", "scenario": scenario, "server": server}
    if rate is not None:
        out["rate"] = rate
    return out


async def _bounded(
    meta: dict[str, Any], budget: float, body: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Run one measurement with a hard time limit; a failure is a result line too."""
    t0 = time.monotonic()
    try:
        res = await asyncio.wait_for(body(), budget)
        return meta | res | {"run_s": round(time.monotonic() - t0, 1)}
    except Exception as exc:  # reported, and the other runs go on
        return meta | {"error": describe(exc)[:2000]}


def describe(exc: BaseException) -> str:
    """`Type: message`, and for an exception group each of its exceptions in turn."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


async def fanout(o: Options, d: Deployment, rate: float) -> dict[str, Any]:
    """One room at `rate` on the deployment `d` (S1, S4, S6): its clients spread over its
    URLs, its helper processes measured apart."""
    return await loadgen.run_fanout(
        d.urls,
        clients=o.clients,
        rate=rate,
        duration=o.duration,
        warmup=o.warmup,
        probes=o.probes,
        pids=d.pids,
        aux_pids=d.aux_pids,
        presence=d.presence,
        drain_timeout=o.drain,
    )


async def run_s1(o: Options, server: str, rate: float) -> dict[str, Any]:
    core = SERVER_CORE if o.pin else None
    budget = 120 + o.warmup + o.duration + o.drain

    async def body() -> dict[str, Any]:
        async with deploy(server, o.logdir, core) as d:
            return await fanout(o, d, rate)

    return await _bounded(_meta("S1", server, rate), budget, body)


async def run_s2(o: Options, server: str) -> dict[str, Any]:
    core = SERVER_CORE if o.pin else None
    duration = max(o.duration, 10.0)  # each client publishes only every 2 s
    budget = 150 + 2 + duration + o.drain

    async def body() -> dict[str, Any]:
        async with deploy(server, o.logdir, core) as d:
            return await loadgen.run_many_rooms(
                d.urls[0],
                rooms=200,
                per_room=10,
                rate=o.s2_rate,
                duration=duration,
                warmup=2.0,
                pids=d.pids,
                presence=d.presence,
                drain_timeout=o.drain,
            )

    return await _bounded(_meta("S2", server, o.s2_rate), budget, body)


async def run_s3(o: Options, server: str) -> dict[str, Any]:
    core = SERVER_CORE if o.pin else None

    async def body() -> dict[str, Any]:
        async with deploy(server, o.logdir, core) as d:
            return await loadgen.run_idle(
                d.urls[0], conns=5000, rooms=500, idle=o.idle, pids=d.pids, presence=d.presence
            )

    return await _bounded(_meta("S3", server), 240 + o.idle, body)


async def run_s4(o: Options, rate: float) -> dict[str, Any]:
    core = SERVER_CORE if o.pin else None
    budget = 150 + o.warmup + o.duration + o.drain

    async def body() -> dict[str, Any]:
        async with deploy("gochat", o.logdir, core, nodes=2) as d:
            return await fanout(o, d, rate)

    return await _bounded(_meta("S4", "gochat", rate), budget, body)


async def _serving(child: Child, workers: int) -> bool:
    return _log(child).count(" serving on http") >= workers


def _log(child: Child) -> str:
    return child.log_path.read_text(errors="replace")


async def run_s6(o: Options, rate: float, server: str) -> dict[str, Any]:
    """S4's work on "gochat-workers" (`--workers 2`: one URL, the kernel spreads the clients
    over the two; the parent's CPU is `supervisor_cpu_s`) or "gochat-nodes" (two nodes)."""
    core = SERVER_CORE if o.pin else None
    budget = 150 + o.warmup + o.duration + o.drain
    workers, nodes = (2, 1) if server == "gochat-workers" else (1, 2)

    async def body() -> dict[str, Any]:
        async with deploy("gochat", o.logdir, core, nodes=nodes, workers=workers) as d:
            return await fanout(o, d, rate) | {"nodes": len(d.pids)}

    return await _bounded(_meta("S6", server, rate), budget, body)


async def run_s5(o: Options, server: str) -> dict[str, Any]:
    core = SERVER_CORE if o.pin else None

    async def body() -> dict[str, Any]:
        async with deploy(server, o.logdir, core) as d:
            return await loadgen.run_join_storm(
                d.urls[0], clients=o.clients, spread=1.0, pids=d.pids, presence=d.presence
            )

    return await _bounded(_meta("S5", server), 200, body)


async def run_api(o: Options) -> list[dict[str, Any]]:
    """The API scenario: the server API's publish rate and its pair, a WebSocket publisher
    sending the same messages at that rate, on one gochat process."""
    core = SERVER_CORE if o.pin else None
    key = secrets.token_urlsafe(24)
    budget = 120 + 2 * (o.warmup + o.duration + o.drain)
    found: list[dict[str, Any]] = []

    async def body() -> dict[str, Any]:
        async with deploy("gochat", o.logdir, core, env={"GOCHAT_API_KEY": key}) as d:
            api, ws = await api_publish.run_api_publish(
                d.urls[0],
                key,
                members=o.api_members,
                concurrency=o.api_concurrency,
                duration=o.duration,
                warmup=o.warmup,
                pids=d.pids,
                drain_timeout=o.drain,
            )
        found.extend([_meta("API", "gochat-api") | api, _meta("API", "gochat-ws") | ws])
        return {}

    failed = await _bounded(_meta("API", "gochat-api"), budget, body)
    return found if len(found) == 2 else [failed]


# The figures compared in ratio lines, by scenario: (name in the ratio line, result field).
_FANOUT_RATIOS = (
    ("delivered_rate", "delivered_rate"),
    ("us_per_delivery", "us_per_delivery"),
    ("latency_p50", "latency_ms.p50"),
    ("latency_p99", "latency_ms.p99"),
)
RATIO_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "S1": (*_FANOUT_RATIOS, ("rss_per_conn_kb", "rss_per_conn_kb")),
    "S2": (*_FANOUT_RATIOS, ("rss_per_conn_kb", "rss_per_conn_kb")),
    "S3": (("rss_per_conn_kb", "rss_per_conn_kb"), ("server_cpu_util", "server_cpu_util")),
    "S4": _FANOUT_RATIOS,
    "S6": _FANOUT_RATIOS,
    "S7": (*_FANOUT_RATIOS, ("redis_us_per_delivery", "redis_us_per_delivery")),
    "API": (
        ("delivered_rate", "delivered_rate"),
        ("us_per_message", "us_per_message"),
        ("us_per_delivery", "us_per_delivery"),
        ("latency_p50", "latency_ms.p50"),
        ("latency_p99", "latency_ms.p99"),
    ),
    "S5": (
        ("settle_s", "settle_s"),
        ("frames", "frames"),
        ("bytes", "bytes"),
        ("server_cpu_s", "server_cpu_s"),
    ),
}


def _get(res: dict[str, Any], dotted: str) -> Any:
    val: Any = res
    for part in dotted.split("."):
        val = val.get(part) if isinstance(val, dict) else None
    return val


def ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """a/b of the scenario's main figures, when both runs succeeded."""
    if "error" in a or "error" in b:
        return None
    out: dict[str, Any] = {"kind": "ratio", "scenario": a["scenario"]}
    if "rate" in a:
        out["rate"] = a["rate"]
    out |= {"a": f"{a['scenario']} {a['server']}", "b": f"{b['scenario']} {b['server']}"}
    for name, key in RATIO_KEYS[a["scenario"]]:
        x, y = _get(a, key), _get(b, key)
        if isinstance(x, int | float) and isinstance(y, int | float) and y:
            out[name] = round(x / y, 3)
    return out


def machine_line(o: Options) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    import aiohttp  # only for its version

    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""

    return {
        "kind": "machine",
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "commit": commit or None,
        "pinned": {"servers": SERVER_CORE, "loadgen": LOADGEN_CORE} if o.pin else None,
        "loadavg": os.getloadavg()[0],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def pair_order(servers: list[str], round_no: int) -> list[str]:
    """The order of each pair's runs in round `round_no` (from 1): as given in odd rounds,
    the naive hub first in even ones, so that whatever favours the first (or the second)
    run of a pair favours each server equally often over `--repeat` rounds."""
    return sorted(servers, key=lambda s: s != "naive") if round_no % 2 == 0 else list(servers)


async def bench(o: Options, emit: Callable[[dict[str, Any]], None], round_no: int = 1) -> int:
    """Run the chosen scenarios; returns how many runs failed."""
    failures = 0
    servers = pair_order(o.servers, round_no)
    done: dict[tuple[str, str, float | None], dict[str, Any]] = {}

    async def measure(label: str, run: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """One run (again, up to o.retry_noisy times, while other work on the machine skewed
        it; the quietest attempt is kept), recorded and printed."""
        nonlocal failures
        best: dict[str, Any] | None = None
        note = ""
        attempts = 0
        while attempts <= o.retry_noisy:
            attempts += 1
            log(label + note)
            res = await run()
            if best is None or res.get("other_cpu_util", 0) < best.get("other_cpu_util", 0):
                best = res
            if not res.get("noisy") or "error" in res:
                break
            note = f" again: other work used {res.get('other_cpu_util')} core"
        assert best is not None
        best["attempts"] = attempts
        failures += "error" in best
        done[(best["scenario"], best["server"], best.get("rate"))] = best
        emit(best)

    def compare(a_key: tuple[str, str, float | None], b_key: tuple[str, str, float | None]) -> None:
        if a_key in done and b_key in done and (line := ratio(done[a_key], done[b_key])):
            emit(line)

    runners: dict[str, Callable[[str], Awaitable[dict[str, Any]]]] = {
        "S2": lambda s: run_s2(o, s),
        "S3": lambda s: run_s3(o, s),
        "S5": lambda s: run_s5(o, s),
    }
    for sc in o.scenarios:
        if sc == "S1":
            for rate in o.rates:
                for server in servers:
                    await measure(
                        f"S1 {server} at {rate:g} msg/s",
                        functools.partial(run_s1, o, server, rate),
                    )
                compare(("S1", "gochat", rate), ("S1", "naive", rate))
                compare(("S1", "gochat-public", rate), ("S1", "naive", rate))
        elif sc == "API":
            if "gochat" not in o.servers:
                continue
            log(
                f"API: {o.api_concurrency} requests in flight to {o.api_members} members, "
                "then a WebSocket publisher at that rate"
            )
            for res in await run_api(o):
                res["attempts"] = 1
                failures += "error" in res
                done[(res["scenario"], res["server"], None)] = res
                emit(res)
            compare(("API", "gochat-api", None), ("API", "gochat-ws", None))
        elif sc == "S4":
            if "gochat" not in o.servers:
                continue
            for rate in o.s4_rates:
                await measure(
                    f"S4 gochat x2 + redis at {rate:g} msg/s", functools.partial(run_s4, o, rate)
                )
                compare(("S4", "gochat", rate), ("S1", "gochat", rate))
                compare(("S4", "gochat", rate), ("S1", "naive", rate))
        elif sc == "S6":
            if "gochat" not in o.servers:
                continue
            for rate in o.s4_rates:
                for server in ("gochat-workers", "gochat-nodes"):
                    run = functools.partial(run_s6, o, rate, server)
                    await measure(f"S6 {server} + redis at {rate:g} msg/s", run)
                compare(("S6", "gochat-workers", rate), ("S6", "gochat-nodes", rate))
        elif sc == "S7":
            if "gochat" not in o.servers:
                continue
            from bench import cluster_fanout  # imported here: it imports this module

            kinds = cluster_fanout.REDIS_KINDS[:: 1 if round_no % 2 else -1]
            for rate, rooms in [*((r, 1) for r in o.s4_rates), (o.s2_rate, cluster_fanout.ROOMS)]:
                for redis in kinds:
                    run = functools.partial(cluster_fanout.run_s7, o, rate, redis, rooms)
                    await measure(f"S7 gochat x2 + {redis}, {rooms} room(s), {rate:g} msg/s", run)
                names = [cluster_fanout.server_name(k, rooms) for k in ("cluster", "redis")]
                compare(("S7", names[0], rate), ("S7", names[1], rate))
        elif sc == "S8":
            if "gochat" not in o.servers:
                continue
            from bench import conn_scale  # imported here: it imports this module

            failures += await conn_scale.run_scenario(o.logdir, o.pin, o.idle, emit)
        else:
            rate_key = o.s2_rate if sc == "S2" else None
            for server in servers:
                await measure(f"{sc} {server}", functools.partial(runners[sc], server))
            compare((sc, "gochat", rate_key), (sc, "naive", rate_key))
            compare((sc, "gochat-public", rate_key), (sc, "naive", rate_key))
    return failures


# --------------------------------------------------------------------------- the check


async def _check(
    clients: int, messages: int, rate: float, server: str, timeout: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gochat-check-") as tmp:
        try:
            async with deploy(server, Path(tmp), core=None) as d:
                try:
                    res = await asyncio.wait_for(
                        loadgen.run_s1(
                            d.urls[0],
                            clients=clients,
                            messages=messages,
                            rate=rate,
                            presence=d.presence,
                            timeout=timeout,
                            pids=d.pids,
                        ),
                        2 * timeout,
                    )
                except Exception as exc:
                    res = {"ok": False, "error": describe(exc)}
                if not res["ok"]:
                    res["server_log"] = d.children[-1].log_tail(40)
        except Exception as exc:  # the server did not start
            res = {"ok": False, "error": describe(exc)}
    return {"kind": "check", "scenario": "S1", "server": server} | res


def run_check(
    clients: int = 100,
    messages: int = 300,
    rate: float = 200.0,
    server: str = "gochat",
    timeout: float = 60.0,
) -> dict[str, Any]:
    """The correctness check of `make test`: start `server` on a free port, run a short S1
    (every client must receive every message exactly once, in order) and stop it. The
    returned dict has "ok"; nothing is pinned, timing is reported but not judged."""
    return asyncio.run(_check(clients, messages, rate, server, timeout))


# --------------------------------------------------------------------------- CLI


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument(
        "--scenario",
        default="all",
        help="comma-separated S1..S8 and API, or all (S1-S6 and API; S7 and S8 only by name)",
    )
    p.add_argument(
        "--servers",
        default="gochat,naive",
        help="any of gochat, naive and gochat-public (gochat with GOCHAT_FAST_PATHS=0)",
    )
    p.add_argument("--rates", default="50,100,200,400,1000", help="S1 rates, msg/s")
    p.add_argument("--s4-rates", default="50,100,400", help="S4 rates, msg/s")
    p.add_argument("--s2-rate", type=float, default=1000.0, help="S2 rate, msg/s in all")
    p.add_argument("--duration", type=float, default=5.0, help="measurement window, s")
    p.add_argument("--warmup", type=float, default=1.0, help="publishing before the window, s")
    p.add_argument("--clients", type=int, default=1000, help="clients in S1, S4, S5")
    p.add_argument("--probes", type=int, default=10, help="timing clients in S1 and S4")
    p.add_argument("--api-members", type=int, default=50, help="WebSocket members in API")
    p.add_argument("--api-concurrency", type=int, default=8, help="API requests in flight in API")
    p.add_argument("--idle", type=float, default=5.0, help="S3 idle time, s")
    p.add_argument("--drain", type=float, default=10.0, help="longest wait after the last send")
    p.add_argument(
        "--retry-noisy",
        type=int,
        default=0,
        metavar="N",
        help="run again, up to N times, a run that other work on the machine skewed",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run every scenario N times, round after round; the tables show medians",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and load generator")
    p.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    p.add_argument("--quiet", action="store_true", help="no summary tables on stderr at the end")
    p.add_argument("--logs", type=Path, help="keep server logs here (default: a temp dir)")
    p.add_argument("--check", action="store_true", help="short S1 correctness run; exit 1 if bad")
    p.add_argument("--check-clients", type=int, default=100)
    p.add_argument("--check-messages", type=int, default=300)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.check:
        res = run_check(args.check_clients, args.check_messages, server=servers[0])
        print(json.dumps(res), flush=True)
        return 0 if res["ok"] else 1

    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 12000:  # S3 holds 5000 sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    cores = os.sched_getaffinity(0)
    pin = not args.no_pin and {SERVER_CORE, LOADGEN_CORE} <= cores
    if pin:
        os.sched_setaffinity(0, {LOADGEN_CORE})
    elif not args.no_pin:
        log("fewer than 2 cores: nothing pinned, figures are not comparable to the reference")
    scenarios = ALL_SCENARIOS if args.scenario == "all" else args.scenario.upper().split(",")
    bad = [s for s in scenarios if s not in ALL_SCENARIOS + NAMED_ONLY] + [
        s for s in servers if s not in ("gochat", "gochat-public", "naive")
    ]
    if bad:
        print(f"unknown scenario or server: {', '.join(bad)}", file=sys.stderr)
        return 2
    out = open(args.out, "a") if args.out else None
    lines: list[dict[str, Any]] = []

    def emit_tagged(tag: dict[str, Any], line: dict[str, Any]) -> None:
        emit(line | tag)

    def emit(line: dict[str, Any]) -> None:
        lines.append(line)
        text = json.dumps(line)
        print(text, flush=True)
        if out is not None:
            out.write(text + "\n")
            out.flush()

    with contextlib.ExitStack() as stack:
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            logdir = args.logs
        else:
            logdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gochat-bench-")))
        o = Options(
            servers=servers,
            scenarios=list(scenarios),
            rates=_floats(args.rates),
            s4_rates=_floats(args.s4_rates),
            duration=args.duration,
            warmup=args.warmup,
            clients=args.clients,
            probes=args.probes,
            s2_rate=args.s2_rate,
            api_members=args.api_members,
            api_concurrency=args.api_concurrency,
            idle=args.idle,
            drain=args.drain,
            retry_noisy=args.retry_noisy,
            pin=pin,
            logdir=logdir,
        )
        emit(machine_line(o))
        t0 = time.monotonic()
        failures = 0
        try:
            for n in range(1, args.repeat + 1):
                if args.repeat > 1:
                    log(f"round {n} of {args.repeat}")
                tag = {"round": n} if args.repeat > 1 else {}
                failures += asyncio.run(bench(o, functools.partial(emit_tagged, tag), n))
            if args.repeat > 1:
                for row in report.medians(lines):
                    emit(row | {"kind": "median" if row["kind"] == "result" else "median_ratio"})
        finally:
            if out is not None:
                out.close()
        log(f"done in {time.monotonic() - t0:.0f} s, {failures} run(s) failed")
        if not args.quiet:  # the same lines as tables, for a person (stdout stays JSON)
            print("\n" + report.render(lines), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the servers were stopped on the way out
        log("interrupted")
        sys.exit(130)
