"""Load generator for the gochat benchmarks: many cheap WebSocket clients in one asyncio loop.

Why it is built this way:
- The clients speak WebSocket through a minimal client of our own on raw asyncio transports,
  not aiohttp's client: a benchmark of 1000 subscribers must cost the load generator much less
  per delivered message than it costs the server, or it measures itself.
- Most subscribers *count*. A chunk of received bytes is checked to be whole text frames with a
  few strided slices (`_uniform`) or, failing that, a walk over the frame headers (`_walk`);
  then one regex scan takes every sequence number of the chunk and one list comparison checks
  them against the expected run. No JSON is parsed and nothing is made per message unless the
  chunk holds something unusual (a ping, an error, a gap), which takes the slow path.
- Counting subscribers are not read on every wake-up but in sweeps (`Sweeper`), so that what
  arrived meanwhile costs one read; the kernel holds it in between, unseen by the server.
- A few *probe* subscribers decode every frame as JSON and time every message, read as soon as
  it arrives: the publisher puts its send time (monotonic ns, same process) into the text, so
  latency needs no clock sync.
- Every chat text is `seq=<n>;p=<publisher>;t=<ns>;` padded with dots to 64 bytes, so each
  copy a client receives is checked for loss, duplication and order (per publisher).
- Client frames are masked, as RFC 6455 requires of clients, with a fresh random key each.

The scenario functions (`run_fanout`, `run_many_rooms`, `run_idle`, `run_join_storm`) each
return one flat dict, ready to print as a JSON line; `run_s1` is the small correctness run
that `make test` uses. Server CPU and memory come from /proc/<pid> of the processes given.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import json
import os
import re
import resource
import select
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT_SIZE = 64  # bytes of chat text, as in the reference figures
# A loop whose CPU use passes this share of one core is the bottleneck, not the server.
SATURATED_UTIL = 0.90
# S5 times the storm from frame arrivals: its counting clients are read more often.
STORM_SWEEP = 0.02
# ...and if sending its joins took this much longer than the spread, it could not keep up.
STORM_LATE = 1.05
# Bytes taken per read. Not more: os.read and asyncio allocate the whole size first, and
# past glibc's mmap threshold (128 KiB) that allocation costs more than the read itself.
READ_SIZE = 65536
# Other processes using this share of a core during a window make its figures suspect.
NOISY_UTIL = 0.10

_SEQ = re.compile(rb"seq=\d+;")  # counting subscribers: one publisher, seq only
_TEXT = re.compile(r"seq=(\d+);p=(\d+);t=(\d+);")  # probes: the whole marker
_PRESENCE = b'{"type":"presence",'  # how gochat's presence frames start (orjson, no spaces)
_ONLINE = b'"status":"online"'
_JOINED = b'{"type":"joined",'
_MEMBER = b'{"userId":'
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- frames


def encode_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final client frame: masked with a random key, as RFC 6455 requires of clients."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = _LEN16.pack(0x80 | opcode, 0x80 | 126, n)
    else:
        header = _LEN64.pack(0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    # XOR the whole payload in one big-int operation instead of a Python loop per byte.
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little"
    )
    return header + key + masked


def chat_text(seq: int, pub: int, sent_ns: int) -> str:
    """The 64-byte chat text that carries the sequence number and the send time."""
    return f"seq={seq};p={pub};t={sent_ns};".ljust(TEXT_SIZE, ".")


def chat_frame(room: str, seq: int, pub: int, sent_ns: int) -> bytes:
    text = chat_text(seq, pub, sent_ns)
    return encode_frame(f'{{"type":"chat","room":"{room}","text":"{text}"}}'.encode())


def _frame_bounds(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    """(header length, payload length) of the frame at `pos`, or (0, 0) if it is incomplete."""
    if end - pos < 2:
        return 0, 0
    n = buf[pos + 1]  # server frames are never masked, so this is the 7-bit length
    if n < 126:
        h = 2
    elif n == 126:
        if end - pos < 4:
            return 0, 0
        n, h = (buf[pos + 2] << 8) | buf[pos + 3], 4
    else:
        if end - pos < 10:
            return 0, 0
        n, h = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
    if end - pos < h + n:
        return 0, 0
    return h, n


_SEQ_FIELDS: list[bytes] = []  # b"seq=0;", b"seq=1;", ...: what counting clients expect


def _seq_fields(upto: int) -> list[bytes]:
    """`_SEQ_FIELDS` with at least `upto` entries. Comparing the fields found with these
    (C loops) costs less than converting each to an int and comparing with a range."""
    fields = _SEQ_FIELDS
    if len(fields) < upto:
        fields.extend(b"seq=%d;" % i for i in range(len(fields), max(upto, 2 * len(fields))))
    return fields


def _uniform(buf: bytes | bytearray) -> tuple[int, int]:
    """(k, end) if `buf` holds k >= 1 whole final text frames all of the same length, ending
    at `end`, and after them at most an incomplete frame (left for the next read); else
    (0, 0).

    Frames of one room's chats mostly have the same length, and a chunk of them is checked
    with a few strided slices (C loops) instead of a Python loop per frame: every header
    byte must be 0x81 and every length field the same. A chunk cut mid-frame (a full
    read buffer, when sweeps fall behind) is common exactly when this matters most."""
    size = len(buf)
    if size < 2 or buf[0] != 0x81:
        return 0, 0
    n = buf[1]
    if n < 126:
        flen, h = 2 + n, 2
    elif n == 126 and size >= 4:
        flen, h = 4 + ((buf[2] << 8) | buf[3]), 4
    else:
        return 0, 0
    k = size // flen
    end = k * flen
    if end < size and _frame_bounds(buf, end, size)[0]:
        return 0, 0  # what follows is a whole frame of another length: the walk takes it
    if k > 1:
        for i in range(h):
            if buf[i:end:flen] != bytes((buf[i],)) * k:
                return 0, 0
    return k, end


def _walk(buf: bytes | bytearray) -> tuple[int, int, bool]:
    """Walk the complete frames at the start of `buf`.

    Returns (offset after the last complete frame, number of final text frames, whether any
    other frame was seen). This loop is the per-frame cost of a counting client, so it is
    written for speed: the usual 2-byte extended length first, one comparison per bound.
    """
    pos, end, texts, other = 0, len(buf), 0, False
    while end - pos >= 2:
        n = buf[pos + 1]  # server frames are never masked, so this is the 7-bit length
        if n == 126:
            if end - pos < 4:
                break
            nxt = pos + 4 + ((buf[pos + 2] << 8) | buf[pos + 3])
        elif n < 126:
            nxt = pos + 2 + n
        else:
            if end - pos < 10:
                break
            nxt = pos + 10 + int.from_bytes(buf[pos + 2 : pos + 10], "big")
        if nxt > end:
            break
        if buf[pos] == 0x81:  # FIN + text
            texts += 1
        else:
            other = True
        pos = nxt
    return pos, texts, other


# --------------------------------------------------------------------------- measuring


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds, from /proc/<pid>/stat."""
    return sum(proc_user_sys_s(pid))


def proc_user_sys_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK  # fields 14, 15 of stat(5)


def proc_rss_kb(pid: int) -> int:
    """Resident set size of a process in KiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def machine_busy_s() -> float:
    """CPU seconds the machine's cores have been busy since boot, from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def others(busy: float, ours: float, wall: float) -> dict[str, Any]:
    """What the rest of the machine used meanwhile (`busy` in all, less `ours`), per second.

    Other work (a test suite, a browser, short-lived processes included) competes for the
    cores and skews every figure: past NOISY_UTIL the run is flagged. Packet processing in
    softirq is charged to the process it interrupts, here the server or the load generator,
    so on a quiet machine this is close to 0."""
    util = max(0.0, busy - ours) / wall
    return {"other_cpu_util": _r(util), "noisy": util >= NOISY_UTIL}


def self_cpu_s() -> float:
    """This process's own CPU time (all threads), in seconds."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _cpu(pids: Iterable[int]) -> float:
    return sum(proc_cpu_s(p) for p in pids)


def _rss(pids: Iterable[int]) -> int:
    return sum(proc_rss_kb(p) for p in pids)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil without floats
    return sorted_values[int(rank) - 1]


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


# --------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        u = urlsplit(url)
        if u.scheme != "ws" or not u.hostname:
            raise ValueError(f"need a ws:// URL, got {url!r}")
        return cls(u.hostname, u.port or 80, u.path or "/ws")


class Stream:
    """What one client received of one publisher's sequence 0..last."""

    __slots__ = ("next", "last", "count", "missing", "dups", "reorders", "complete")

    def __init__(self, last: int) -> None:
        self.next = 0  # one past the highest sequence number seen
        self.last = last
        self.count = 0  # distinct sequence numbers received
        self.missing: set[int] = set()  # skipped over; each may still come, out of order
        self.dups = 0
        self.reorders = 0
        self.complete = last < 0  # the last message has arrived (or none is expected)

    def add(self, seq: int) -> None:
        nxt = self.next
        if seq == nxt:
            self.next = nxt + 1
            self.count += 1
        elif seq > nxt:
            self.missing.update(range(nxt, seq))
            self.next = seq + 1
            self.count += 1
        elif seq in self.missing:
            self.missing.discard(seq)
            self.reorders += 1
            self.count += 1
        else:
            self.dups += 1

    def take_run(self, buf: bytes | bytearray, end: int, k: int, stride: int) -> bool:
        """Whether the k frames of `stride` bytes in buf[:end] carry exactly this stream's next
        k sequence numbers; if so, they are counted. A publisher's texts all start with their
        `seq=<n>;`, so when the k fields have one length they sit at one offset in every
        frame: a strided slice per byte of the field, compared with the expected fields'
        bytes, checks them all without scanning the chunk (the regex's cost, most of a
        counting client's at a million deliveries a second)."""
        nxt = self.next
        fields = _seq_fields(nxt + k)
        first = fields[nxt]
        size = len(first)
        if len(fields[nxt + k - 1]) != size:
            return False  # crosses a power of ten: the regex takes it
        at = buf.find(first, 0, stride)
        if at < 0:
            return False
        want = b"".join(fields[nxt : nxt + k])
        for j in range(size):
            if buf[at + j : end : stride] != want[j::size]:
                return False
        self.next = nxt + k
        self.count += k
        return True

    @property
    def undelivered(self) -> int:
        """Messages after the highest one received: not lost in a gap, just never arrived."""
        return max(0, self.last + 1 - self.next)


class Run:
    """State shared by all clients of one scenario run."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.clients: list[Client] = []
        self.presence = 0
        self.presence_target: int | None = None
        self.presence_reached = asyncio.Event()
        self.done = 0
        self.done_target = 0
        self.all_done = asyncio.Event()
        self.lat_sent: list[int] = []  # probes: send time (monotonic ns) of each timed message
        self.lat_ns: list[int] = []  # probes: its latency
        self.errors: Counter[str] = Counter()  # `error` frames by code
        self.closes: Counter[int] = Counter()  # connections the server closed, by code
        self.foreign = 0  # chat frames with no marker we sent, or from a publisher not expected
        self.tearing_down = False
        self.last_frame_t = 0.0  # loop time of the last presence or joined frame read
        self.last_joined_t = 0.0  # loop time of the last joined frame read
        self.sweeper: Sweeper | None = None
        self.read_buffer = memoryview(bytearray(READ_SIZE))  # shared: reads are sequential

    def add_presence(self, n: int = 1) -> None:
        self.presence += n
        self.last_frame_t = self.loop.time()
        if self.presence_target is not None and self.presence >= self.presence_target:
            self.presence_reached.set()

    def client_done(self) -> None:
        self.done += 1
        if self.done >= self.done_target:
            self.all_done.set()

    def expect_done(self, n: int) -> None:
        self.done_target = n
        if self.done >= n:
            self.all_done.set()

    async def wait_presence(self, target: int, timeout: float, quiet: float = 0.5) -> bool:
        """Wait until `target` presence frames have arrived in all (True), or the flow stops:
        nothing new for `quiet` seconds, or `timeout` (False)."""
        self.presence_target = target
        if self.presence >= target:
            return True
        deadline = self.loop.time() + timeout
        seen = -1
        while self.loop.time() < deadline:
            try:
                await asyncio.wait_for(self.presence_reached.wait(), quiet)
                return True
            except TimeoutError:
                if self.presence == seen:
                    return False
                seen = self.presence
        return False

    def teardown(self) -> None:
        self.tearing_down = True
        if self.sweeper is not None:
            self.sweeper.close()
        for c in self.clients:
            if c.transport is not None:
                c.transport.abort()


class Client(asyncio.BufferedProtocol):
    """One WebSocket connection: a counting subscriber, or a probe when `probe` is set.

    A BufferedProtocol, so that asyncio reads into the run's one buffer: as a plain Protocol
    each read would allocate a fresh 256 KiB bytes object, which costs more than the read."""

    def __init__(self, run: Run, idx: int, target: Target, probe: bool) -> None:
        self.run = run
        self.idx = idx
        self.target = target
        self.probe = probe
        self.transport: asyncio.Transport | None = None
        self._key = base64.b64encode(os.urandom(16))
        self._handshake: bytearray | None = bytearray()  # until the 101 response is complete
        self._buf = bytearray()
        self._frag: bytearray | None = None
        self.welcome: asyncio.Future[dict[str, Any]] = run.loop.create_future()
        self.joined: asyncio.Future[dict[str, Any]] | None = None
        self.streams: dict[int, Stream] = {}
        self._single: Stream | None = None  # set when counting one publisher: the fast path
        self._pending = 0  # streams whose last message has not arrived
        self.finished = True
        self.frames = 0
        self.chats = 0  # chat frames received, duplicates included
        self.bytes = 0
        self.presence = 0
        self.joined_members = 0
        self.close_code: int | None = None
        run.clients.append(self)

    # -- setup

    def expect(self, lasts: Mapping[int, int]) -> None:
        """Expect sequence numbers 0..lasts[p] from each publisher p."""
        self.streams = {p: Stream(last) for p, last in lasts.items()}
        self._pending = sum(1 for s in self.streams.values() if not s.complete)
        self._single = None
        if len(self.streams) == 1 and not self.probe:
            self._single = next(iter(self.streams.values()))
        self.finished = False
        if self._pending == 0:
            self._finish()

    def join(self, room: str) -> asyncio.Future[dict[str, Any]]:
        self.joined = self.run.loop.create_future()
        self.send_json({"type": "join", "room": room})
        return self.joined

    def send_json(self, obj: Mapping[str, Any]) -> None:
        self.write(encode_frame(json.dumps(obj, separators=(",", ":")).encode()))

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.run.client_done()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        t = self.target
        transport.write(
            f"GET {t.path}?name=b{self.idx} HTTP/1.1\r\nHost: {t.host}:{t.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self._key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
            "User-Agent: gochat-bench\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.run.tearing_down:
            self.run.closes[self.close_code or 1006] += 1
        for fut in (self.welcome, self.joined):
            if fut is None or fut.done():
                continue
            if self.run.tearing_down:  # nobody waits any more: no "never retrieved" noise
                fut.cancel()
            else:
                fut.set_exception(ConnectionError(f"closed ({self.close_code or exc})"))
        self._finish()  # nothing more will come

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.run.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.run.read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """Take the bytes of one read (from asyncio or from the Sweeper)."""
        if self._handshake is not None:
            self._on_handshake(data)
            return
        self.bytes += len(data)
        buf = self._buf
        chunk: bytes | bytearray = data
        if buf:  # a partial frame is pending: complete it (else work on `data`, no copy)
            buf += data
            chunk = buf
        texts, end = _uniform(chunk)
        if texts:
            other, stride = False, end // texts
        else:
            end, texts, other = _walk(chunk)
            stride = 0
        if end and (other or self.probe or not self._count(chunk, end, texts, stride)):
            self._slow(chunk, end, time.monotonic_ns() if self.probe else 0)
        if chunk is buf:
            del buf[:end]
        elif end < len(data):
            buf += memoryview(data)[end:]

    # -- receiving

    def _on_handshake(self, data: bytes) -> None:
        hs = self._handshake
        assert hs is not None
        hs += data
        head_end = hs.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head, rest = bytes(hs[:head_end]), bytes(hs[head_end + 4 :])
        self._handshake = None
        lines = head.split(b"\r\n")
        accept = base64.b64encode(hashlib.sha1(self._key + WS_GUID).digest())
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines)}
        if b" 101 " not in lines[0] + b" " or headers.get(b"sec-websocket-accept") != accept:
            if not self.welcome.done():
                self.welcome.set_exception(ConnectionError(f"upgrade refused: {lines[0]!r}"))
            assert self.transport is not None
            self.transport.close()
            return
        if rest:
            self.data_received(rest)

    def _count(self, buf: bytes | bytearray, end: int, texts: int, stride: int = 0) -> bool:
        """Fast path: account for a chunk of whole text frames without decoding them.

        Handles chunks made only of chat frames from the one publisher this client counts
        and of `presence` online frames (the join floods); returns False, having changed
        nothing, for anything else, which then takes the slow path. `stride`: the frames'
        common length, when they all have one (`_uniform`)."""
        st = self._single
        if st is not None and stride and st.take_run(buf, end, texts, stride):
            self.frames += texts
            self.chats += texts
            if not st.complete and st.next > st.last:
                self._stream_complete(st)
            return True
        found = _SEQ.findall(buf, 0, end) if st is not None else []
        n = len(found)
        rest = texts - n  # text frames that are not our chats: presence online, or unusual
        if rest and buf.count(_ONLINE, 0, end) != rest:
            return False
        self.frames += texts
        if rest:
            self.presence += rest
            self.run.add_presence(rest)
        if st is None or not n:
            return True
        self.chats += n
        nxt = st.next
        if found == _seq_fields(nxt + n)[nxt : nxt + n]:  # the usual case: the next ones
            st.next = nxt + n
            st.count += n
        else:
            for field in found:
                st.add(int(field[4:-1]))
        if not st.complete and st.next > st.last:
            self._stream_complete(st)
        return True

    def _joined(self, members: int, msg: dict[str, Any]) -> None:
        self.run.last_frame_t = self.run.last_joined_t = self.run.loop.time()
        self.joined_members = members
        if self.joined is not None and not self.joined.done():
            self.joined.set_result(msg)

    def _stream_complete(self, st: Stream) -> None:
        st.complete = True
        self._pending -= 1
        if self._pending == 0:
            self._finish()

    def _slow(self, buf: bytes | bytearray, end: int, now: int) -> None:
        """Decode every frame of the chunk: probes always, counters when the chunk is unusual."""
        pos = 0
        while pos < end:
            h, n = _frame_bounds(buf, pos, end)
            b0, payload = buf[pos], bytes(buf[pos + h : pos + h + n])
            pos += h + n
            self.frames += 1
            op = b0 & 0x0F
            if op == 0x1 or op == 0x0:
                if op == 0x1:
                    self._frag = bytearray()
                if self._frag is None:
                    continue  # a continuation with no start: ignore it
                self._frag += payload
                if b0 & 0x80:
                    self._on_text(bytes(self._frag), now)
                    self._frag = None
            elif op == 0x9:  # ping -> pong, or the server's heartbeat closes us
                self.write(encode_frame(payload, 0xA))
            elif op == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.write(encode_frame(payload[:2], 0x8))
                assert self.transport is not None
                self.transport.close()
                return

    def _on_text(self, payload: bytes, now: int) -> None:
        if payload.startswith(_PRESENCE) and payload.endswith(b"}"):
            # A join storm sends n(n-1)/2 of these, and the ones that share a read with a
            # `joined` come here: counted from their bytes, as `_count` does, since decoding
            # each made the load generator S5's bottleneck on a slower machine.
            # `"status":"online"` can only be that key: in a JSON string `"` is escaped.
            if _ONLINE in payload:
                self.presence += 1
                self.run.add_presence()
            return
        if payload.startswith(_JOINED) and payload.endswith(b"}"):
            # the storm's n joins list 1, 2, ..., n members: n²/2 entries not to decode.
            # Each member object starts with its userId; a history message never does.
            self._joined(payload.count(_MEMBER), {"type": "joined"})
            return
        try:
            msg = orjson.loads(payload)  # probes decode every frame: ~3x cheaper than json
            kind = msg.get("type")
        except (ValueError, AttributeError):
            self.run.errors["bad_json_from_server"] += 1
            return
        if kind == "chat":
            self.chats += 1
            m = _TEXT.match(str(msg.get("text", "")))
            st = None if m is None else self.streams.get(int(m[2]))
            if m is None or st is None:
                self.run.foreign += 1
                return
            st.add(int(m[1]))
            if now:
                sent = int(m[3])
                self.run.lat_sent.append(sent)
                self.run.lat_ns.append(now - sent)
            if not st.complete and st.next > st.last:
                self._stream_complete(st)
        elif kind == "presence":
            if msg.get("status") == "online":
                self.presence += 1
                self.run.add_presence()
        elif kind == "welcome":
            if not self.welcome.done():
                self.welcome.set_result(msg)
        elif kind == "joined":
            self._joined(len(msg.get("members") or ()), msg)
        elif kind == "error":
            self.run.errors[str(msg.get("code"))] += 1
            if self.joined is not None and not self.joined.done():
                self.joined.set_exception(ConnectionError(f"join refused: {msg}"))


# --------------------------------------------------------------------------- batched reading


class Sweeper:
    """Reads the counting clients in sweeps, every `interval` seconds, not on every wake-up.

    asyncio costs several microseconds per read, and a server that writes each message to
    each client at once causes one read per delivery: at 1000 clients the load generator
    would spend more per delivery than a good server does. Counting clients do not time
    anything, so their transports stop reading (`pause_reading`) and one epoll set is swept
    periodically instead: what arrived in between is read in one `os.read` per socket, so
    the cost per read is paid once per sweep, not once per message. The kernel buffers the
    meantime (a few KB at 1000 msg/s), which the server does not notice. The probes keep
    reading through asyncio at once, and a sweep yields to them every `slice_` sockets.
    """

    def __init__(self, clients: Iterable[Client], interval: float = 0.05, slice_: int = 32) -> None:
        self.interval = interval
        self.slice = slice_
        self.sweeps = 0
        self.reads = 0
        self._epoll = select.epoll()
        self._by_fd: dict[int, Client] = {}
        for c in clients:
            if c.transport is None or c.transport.is_closing():
                continue
            fd = c.transport.get_extra_info("socket").fileno()
            c.transport.pause_reading()
            self._epoll.register(fd, select.EPOLLIN)
            self._by_fd[fd] = c
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.sweep()

    async def sweep(self) -> None:
        self.sweeps += 1
        for i, (fd, _) in enumerate(self._epoll.poll(0)):
            c = self._by_fd.get(fd)
            if c is None or c.transport is None or c.transport.is_closing():
                self._release(fd)
                continue
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                self.reads += 1
                c.data_received(data)
            else:  # EOF or reset: hand the socket back to asyncio, which will close it
                self._release(fd)
                c.transport.resume_reading()
            if i % self.slice == self.slice - 1:
                await asyncio.sleep(0)

    def _release(self, fd: int) -> None:
        if self._by_fd.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def close(self) -> None:
        self._task.cancel()
        self._by_fd.clear()
        self._epoll.close()


# --------------------------------------------------------------------------- setup helpers


def probe_indices(n: int, probes: int, groups: int = 1, skip: int = 1) -> list[int]:
    """`probes` client indices spread evenly over skip..n-1; with clients dealt round-robin
    over `groups` nodes, probe k is on node k mod groups, so every node gets its share."""
    probes = max(0, min(probes, n - skip - groups))
    if probes == 0:
        return []
    step = (n - skip - groups) / probes
    out = []
    for k in range(probes):
        i = skip + int(k * step)
        out.append(i + (k - i) % groups)
    return out


async def connect(
    run: Run, targets: Sequence[Target], n: int, probes: Iterable[int], concurrency: int = 64
) -> list[Client]:
    """Open `n` clients, client i to targets[i % len(targets)], and wait for their welcome.

    At most `concurrency` handshakes are in flight, so the server's listen backlog never
    overflows (a dropped SYN costs a 1 s retransmit and spoils the timing)."""
    probe_set = set(probes)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Client:
        t = targets[i % len(targets)]
        async with sem:
            _, client = await run.loop.create_connection(
                lambda: Client(run, i, t, i in probe_set), t.host, t.port
            )
            await client.welcome
        return client

    # A TaskGroup, not gather: when one client fails the others are cancelled, not left
    # connecting in the background while the run tears down.
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(i)) for i in range(n)]
    return [t.result() for t in tasks]


async def join_all(
    clients: Sequence[Client], room_of: Callable[[int], str], concurrency: int = 256
) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(c: Client) -> None:
        async with sem:
            await c.join(room_of(c.idx))

    async with asyncio.TaskGroup() as tg:
        for c in clients:
            tg.create_task(one(c))


async def setup(
    run: Run,
    targets: Sequence[Target],
    n: int,
    probes: Iterable[int],
    room_of: Callable[[int], str] | None,
    presence: int,
    timeout: float,
    sweep_interval: float = 0.05,
) -> tuple[list[Client], bool]:
    """Connect `n` clients, move the counting ones to a Sweeper, join each to room_of(i),
    and wait for the `presence` online frames the joins cause. Returns (clients, settled)."""
    deadline = run.loop.time() + timeout
    members = await asyncio.wait_for(connect(run, targets, n, probes), timeout)
    run.sweeper = Sweeper((c for c in members if not c.probe), interval=sweep_interval)
    if room_of is None:
        return members, True
    await asyncio.wait_for(join_all(members, room_of), max(0.1, deadline - run.loop.time()))
    settled = await run.wait_presence(presence, timeout=max(0.1, deadline - run.loop.time()))
    return members, settled


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[Run]:
    """One scenario run: its clients are all closed at the end, however it ends."""
    run = Run()
    try:
        yield run
    finally:
        run.teardown()
        await asyncio.sleep(0)  # let the aborted transports close their sockets
        gc.unfreeze()
        gc.collect()


def freeze_gc() -> None:
    """The clients live for the whole run: take them out of the collector's way, so that a
    full collection in the middle of the window does not walk them all."""
    gc.collect()
    gc.freeze()


# --------------------------------------------------------------------------- measuring a window


class Window:
    """Snapshots at the start and the end of the measurement window."""

    def __init__(self, run: Run, pids: Sequence[int], aux: Mapping[str, int]) -> None:
        self.run, self.pids, self.aux = run, pids, aux
        self.sent = 0  # messages written by the publisher(s) so far, kept up to date by them
        self.t: list[float] = []
        self.sent_at: list[int] = []
        self.chats: list[int] = []
        self.server_cpu: list[float] = []
        self.server_sys: list[float] = []
        self.aux_cpu: list[dict[str, float]] = []
        self.self_cpu: list[float] = []
        self.busy: list[float] = []
        self.reads: list[int] = []
        self.lags: list[float] = []

    def snap(self) -> None:
        self.busy.append(machine_busy_s())
        self.reads.append(self.run.sweeper.reads if self.run.sweeper else 0)
        self.t.append(self.run.loop.time())
        self.sent_at.append(self.sent)
        self.chats.append(sum(c.chats for c in self.run.clients))
        self.server_cpu.append(_cpu(self.pids))
        self.server_sys.append(sum(proc_user_sys_s(p)[1] for p in self.pids))
        self.aux_cpu.append({k: proc_cpu_s(p) for k, p in self.aux.items()})
        self.self_cpu.append(self_cpu_s())

    async def measure(self, start: float, length: float, interval: float = 0.01) -> None:
        """Snapshot at `start` and `start + length` (loop time), and sample the loop's lag in
        between: a loop late to wake up is a load generator that adds to the latencies."""
        loop = self.run.loop
        await asyncio.sleep(max(0.0, start - loop.time()))
        await self._sweep()
        self.snap()
        stop = start + length
        while (now := loop.time()) < stop:
            step = min(interval, stop - now)
            await asyncio.sleep(step)
            self.lags.append(loop.time() - now - step)
        await self._sweep()
        self.snap()

    async def _sweep(self) -> None:
        """Read what the counting clients have pending, so the counts are those of now."""
        if self.run.sweeper is not None:
            await self.run.sweeper.sweep()

    def result(self) -> dict[str, Any]:
        if len(self.t) < 2:
            return {}
        wall = self.t[1] - self.t[0]
        offered = self.sent_at[1] - self.sent_at[0]
        deliveries = self.chats[1] - self.chats[0]
        cpu = self.server_cpu[1] - self.server_cpu[0]
        sys_s = self.server_sys[1] - self.server_sys[0]
        own = self.self_cpu[1] - self.self_cpu[0]
        lags = sorted(self.lags)
        out: dict[str, Any] = {
            "window_s": _r(wall),
            "offered_msgs": offered,
            "offered_rate": _r(offered / wall, 1),
            "window_deliveries": deliveries,
            "delivered_rate": _r(deliveries / wall, 1),
            "server_cpu_s": _r(cpu, 2),
            "server_cpu_util": _r(cpu / wall),
            "us_per_delivery": _r(cpu / deliveries * 1e6, 2) if deliveries else None,
            # the kernel's part of it (system time: sends, and the receiver's TCP path they run)
            "server_sys_share": _r(sys_s / cpu) if cpu else None,
        }
        aux = 0.0
        for k in self.aux:
            aux += self.aux_cpu[1][k] - self.aux_cpu[0][k]
            out[f"{k}_cpu_s"] = _r(self.aux_cpu[1][k] - self.aux_cpu[0][k], 2)
        return (
            out
            | {
                "loadgen_cpu_s": _r(own, 2),
                "loadgen_cpu_util": _r(own / wall),
                "loadgen_lag_ms_p99": _r((percentile(lags, 99) or 0.0) * 1e3, 1),
                "loadgen_lag_ms_max": _r((lags[-1] if lags else 0.0) * 1e3, 1),
                "loadgen_saturated": own / wall >= SATURATED_UTIL,
                "loadgen_sweep_reads": self.reads[1] - self.reads[0],
            }
            | others(self.busy[1] - self.busy[0], cpu + own + aux, wall)
        )


def _stream_totals(clients: Sequence[Client]) -> dict[str, int]:
    expected = deliveries = lost = undelivered = dups = reorders = 0
    for c in clients:
        for st in c.streams.values():
            expected += st.last + 1
            deliveries += st.count
            lost += len(st.missing)
            undelivered += st.undelivered
            dups += st.dups
            reorders += st.reorders
    return {
        "expected_deliveries": expected,
        "deliveries": deliveries,  # distinct messages received, summed over clients
        "lost": lost,  # gaps: a later message arrived, this one never did
        "undelivered": undelivered,  # after the last one received, when the drain ended
        "duplicates": dups,
        "reordered": reorders,
    }


def _latency(run: Run, start_ns: int | None = None, end_ns: int | None = None) -> dict[str, Any]:
    """Percentiles (ms) of the probes' latencies of the messages sent in [start_ns, end_ns)."""
    pairs = zip(run.lat_sent, run.lat_ns, strict=True)
    lo, hi = start_ns or 0, end_ns or 1 << 63
    ms = sorted(v / 1e6 for s, v in pairs if lo <= s < hi)
    return {
        "latency_ms": {
            "p50": _r(percentile(ms, 50)),
            "p90": _r(percentile(ms, 90)),
            "p99": _r(percentile(ms, 99)),
            "max": _r(ms[-1] if ms else None),
        },
        "latency_samples": len(ms),
    }


def _health(run: Run) -> dict[str, Any]:
    return {
        "closed": sum(run.closes.values()),
        "close_codes": {str(k): v for k, v in sorted(run.closes.items())},
        "errors": dict(run.errors),
        "foreign": run.foreign,
    }


async def _publish(
    window: Window, rate: float, total: int, start: float, send: Callable[[int, int], None]
) -> None:
    """Call send(k, sent_ns) for k in 0..total-1, message k being due at start + k / rate.

    All that is due at a wake-up is sent then, so a loop that woke up late catches up
    instead of lowering the offered rate silently (the window reports the rate achieved)."""
    loop = asyncio.get_running_loop()
    k = 0
    while k < total:
        await asyncio.sleep(max(0.0, start + k / rate - loop.time()))
        due = min(total, int((loop.time() - start) * rate) + 1)
        now_ns = time.monotonic_ns()
        for j in range(k, due):
            send(j, now_ns)
        k = max(k, due)
        window.sent = k


async def _drain(run: Run, timeout: float) -> bool:
    """Wait until every client has received the last message of every stream it expects."""
    try:
        await asyncio.wait_for(run.all_done.wait(), timeout)
        return True
    except TimeoutError:
        return False


def _ns_at(loop_time: float, loop: asyncio.AbstractEventLoop) -> int:
    """monotonic_ns() at a given loop time (the selector loop's clock is time.monotonic)."""
    return time.monotonic_ns() + int((loop_time - loop.time()) * 1e9)


# --------------------------------------------------------------------------- scenarios


async def run_fanout(
    urls: Sequence[str],
    *,
    clients: int = 1000,
    rate: float = 100.0,
    duration: float = 5.0,
    warmup: float = 1.0,
    messages: int | None = None,
    probes: int = 10,
    pids: Sequence[int] = (),
    aux_pids: Mapping[str, int] | None = None,
    presence: bool = True,
    drain_timeout: float = 10.0,
    setup_timeout: float = 120.0,
    room: str = "bench",
) -> dict[str, Any]:
    """S1 (one URL) and S4 (two): `clients` in one room; client 0 publishes at `rate` msg/s.

    Clients are dealt round-robin over the URLs; the publisher is on the first. The window
    is [warmup, warmup + duration) after the first message; after the last message the run
    waits up to `drain_timeout` for every client to have received it."""
    targets = [Target.parse(u) for u in urls]
    probe_ids = probe_indices(clients, probes, len(targets))
    total = messages if messages is not None else max(1, round(rate * (warmup + duration)))
    rss0 = _rss(pids)
    async with session() as run:
        t_setup = run.loop.time()
        expected_presence = clients * (clients - 1) // 2 if presence else 0
        members, settled = await setup(
            run, targets, clients, probe_ids, lambda i: room, expected_presence, setup_timeout
        )
        setup_s = run.loop.time() - t_setup
        for c in members:
            c.expect({0: total - 1})
        run.expect_done(len(members))
        rss1 = _rss(pids)
        freeze_gc()

        pub = members[0]
        window = Window(run, pids, aux_pids or {})
        start = run.loop.time() + 0.05
        w0 = _ns_at(start + warmup, run.loop)
        measure = asyncio.create_task(window.measure(start + warmup, duration))

        def send(k: int, sent_ns: int) -> None:
            pub.write(chat_frame(room, k, 0, sent_ns))

        await _publish(window, rate, total, start, send)
        await measure
        rss2 = _rss(pids)
        drained = await _drain(run, drain_timeout)
        result: dict[str, Any] = {
            "clients": clients,
            "rooms": 1,
            "nodes": len(targets),
            "rate": rate,
            "messages": total,
            "text_bytes": TEXT_SIZE,
            "probes": len(probe_ids),
            "setup_s": _r(setup_s, 2),
            "presence_settled": settled,
            "drained": drained,
        }
        result |= window.result()
        result |= _stream_totals(members)
        timed = messages is None  # a fixed message count (the check) times every message
        result |= _latency(run, w0, w0 + int(duration * 1e9)) if timed else _latency(run)
        result |= {
            "server_rss_mb": _r(rss2 / 1024, 1),
            "rss_per_conn_kb": _r((rss1 - rss0) / clients, 1) if pids else None,
        }
        return result | _health(run)


async def run_s1(
    url: str,
    clients: int = 100,
    messages: int = 300,
    rate: float = 200.0,
    probes: int = 5,
    presence: bool = True,
    timeout: float = 60.0,
    pids: Sequence[int] = (),
) -> dict[str, Any]:
    """The correctness run of `make test`: S1 with few clients and a fixed message count.

    The result's "ok" is true only when every client received every message exactly once and
    in order, and no connection was closed; timing is reported but not judged."""
    res = await run_fanout(
        [url],
        clients=clients,
        rate=rate,
        duration=messages / rate,
        warmup=0.0,
        messages=messages,
        probes=probes,
        presence=presence,
        drain_timeout=timeout,
        setup_timeout=timeout,
        pids=pids,
    )
    res["ok"] = (
        res["deliveries"] == res["expected_deliveries"] == clients * messages
        and res["lost"] == res["undelivered"] == res["duplicates"] == res["reordered"] == 0
        and res["closed"] == 0
        and res["foreign"] == 0
        and not res["errors"]
    )
    return res


async def run_many_rooms(
    url: str | Sequence[str],
    *,
    rooms: int = 200,
    per_room: int = 10,
    rate: float = 1000.0,
    duration: float = 10.0,
    warmup: float = 2.0,
    pids: Sequence[int] = (),
    aux_pids: Mapping[str, int] | None = None,
    presence: bool = True,
    drain_timeout: float = 10.0,
    setup_timeout: float = 120.0,
) -> dict[str, Any]:
    """S2: `rooms` rooms of `per_room` clients; every client publishes in its room, `rate`
    msg/s in all (message k comes from client k mod n). At this delivery rate every client
    can afford to be a probe, so all of them decode and time every message. With several
    URLs (nodes), client i connects to urls[i % len(urls)], so every room spans them
    (S7); `aux_pids` are measured apart, as in run_fanout."""
    targets = [Target.parse(u) for u in ([url] if isinstance(url, str) else url)]
    n = rooms * per_room
    total = max(1, round(rate * (warmup + duration)))
    rss0 = _rss(pids)

    def room_of(i: int) -> str:
        return f"r{i // per_room}"

    async with session() as run:
        t_setup = run.loop.time()
        expected_presence = rooms * per_room * (per_room - 1) // 2 if presence else 0
        members, settled = await setup(
            run, targets, n, range(n), room_of, expected_presence, setup_timeout
        )
        setup_s = run.loop.time() - t_setup
        sends = [total // n + (1 if j < total % n else 0) for j in range(n)]  # per publisher
        for i, c in enumerate(members):
            base = i - i % per_room
            c.expect({j: sends[j] - 1 for j in range(base, base + per_room)})
        run.expect_done(n)
        rss1 = _rss(pids)
        freeze_gc()

        window = Window(run, pids, aux_pids or {})
        start = run.loop.time() + 0.05
        w0 = _ns_at(start + warmup, run.loop)
        measure = asyncio.create_task(window.measure(start + warmup, duration))

        def send(k: int, sent_ns: int) -> None:
            j = k % n
            members[j].write(chat_frame(room_of(j), k // n, j, sent_ns))

        await _publish(window, rate, total, start, send)
        await measure
        drained = await _drain(run, drain_timeout)
        result: dict[str, Any] = {
            "clients": n,
            "rooms": rooms,
            "nodes": len(targets),
            "rate": rate,
            "messages": total,
            "text_bytes": TEXT_SIZE,
            "probes": n,
            "setup_s": _r(setup_s, 2),
            "presence_settled": settled,
            "drained": drained,
        }
        result |= window.result()
        result |= _stream_totals(members)
        result |= _latency(run, w0, w0 + int(duration * 1e9))
        result |= {
            "server_rss_mb": _r(_rss(pids) / 1024, 1),
            "rss_per_conn_kb": _r((rss1 - rss0) / n, 1) if pids else None,
        }
        return result | _health(run)


async def run_idle(
    url: str,
    *,
    conns: int = 5000,
    rooms: int = 500,
    idle: float = 5.0,
    pids: Sequence[int] = (),
    presence: bool = True,
    setup_timeout: float = 180.0,
) -> dict[str, Any]:
    """S3: `conns` connections in `rooms` rooms, then `idle` seconds of nothing: the server's
    memory per connection, and what it spends on idle connections (heartbeats, timers)."""
    target = Target.parse(url)
    per_room = conns // rooms
    rss0 = _rss(pids)
    async with session() as run:
        t_setup = run.loop.time()
        expected_presence = rooms * per_room * (per_room - 1) // 2 if presence else 0
        members, settled = await setup(
            run, [target], conns, (), lambda i: f"r{i % rooms}", expected_presence, setup_timeout
        )
        setup_s = run.loop.time() - t_setup
        freeze_gc()
        rss1 = _rss(pids)
        busy0, cpu0, own0, t0 = machine_busy_s(), _cpu(pids), self_cpu_s(), run.loop.time()
        await asyncio.sleep(idle)  # the measurement itself: time passing with nothing to do
        busy1, cpu1, own1, t1 = machine_busy_s(), _cpu(pids), self_cpu_s(), run.loop.time()
        rss2 = _rss(pids)
        return (
            {
                "clients": conns,
                "rooms": rooms,
                "setup_s": _r(setup_s, 2),
                "presence_settled": settled,
                "presence_frames": run.presence,
                "idle_s": _r(t1 - t0, 2),
                "server_rss_base_mb": _r(rss0 / 1024, 1),
                "server_rss_mb": _r(rss2 / 1024, 1),
                "rss_per_conn_kb": _r((max(rss1, rss2) - rss0) / conns, 1) if pids else None,
                "server_cpu_s": _r(cpu1 - cpu0, 2),
                "server_cpu_util": _r((cpu1 - cpu0) / (t1 - t0), 4),
                "loadgen_cpu_s": _r(own1 - own0, 2),
                "loadgen_saturated": (own1 - own0) / (t1 - t0) >= SATURATED_UTIL,
            }
            | others(busy1 - busy0, cpu1 - cpu0 + own1 - own0, t1 - t0)
            | _health(run)
        )


async def run_join_storm(
    url: str,
    *,
    clients: int = 1000,
    spread: float = 1.0,
    probes: int = 10,
    pids: Sequence[int] = (),
    presence: bool = True,
    settle_timeout: float = 60.0,
    setup_timeout: float = 120.0,
) -> dict[str, Any]:
    """S5: `clients` connected clients join one room within `spread` seconds, evenly spaced.

    Measured from the first join: until every client has its `joined`, and until presence
    has settled (each member told of each later one: n(n-1)/2 online frames in all); the
    frames and bytes the clients received meanwhile, and the server's CPU."""
    target = Target.parse(url)
    room = "storm"
    async with session() as run:
        loop = run.loop
        members, _ = await setup(
            run,
            [target],
            clients,
            probe_indices(clients, probes),
            None,
            0,
            setup_timeout,
            sweep_interval=STORM_SWEEP,
        )
        freeze_gc()
        frames0, bytes0 = sum(c.frames for c in members), sum(c.bytes for c in members)
        busy0, cpu0, own0 = machine_busy_s(), _cpu(pids), self_cpu_s()
        start = loop.time()
        futs: list[asyncio.Future[dict[str, Any]]] = []
        for i, c in enumerate(members):
            await asyncio.sleep(max(0.0, start + spread * i / clients - loop.time()))
            futs.append(c.join(room))
        joins_sent_s = loop.time() - start
        try:
            await asyncio.wait_for(asyncio.gather(*futs), settle_timeout)
            all_joined = True
        except (TimeoutError, ConnectionError):
            all_joined = False
        joined_s = run.last_joined_t - start
        expected = clients * (clients - 1) // 2 if presence else 0
        remaining = max(1.0, settle_timeout - (loop.time() - start))
        settled = await run.wait_presence(expected, timeout=remaining)
        # The storm is over at the arrival of its last frame (when the count stopped short of
        # the target, wait_presence returned one quiet period after that).
        settle_s = max(run.last_frame_t - start, joined_s)
        busy1, cpu1, own1 = machine_busy_s(), _cpu(pids), self_cpu_s()
        wall = max(loop.time() - start, 1e-9)
        return (
            {
                "clients": clients,
                "rooms": 1,
                "spread_s": spread,
                "joins_sent_s": _r(joins_sent_s),
                "all_joined": all_joined,
                "joined_s": _r(joined_s),
                "presence_settled": settled,
                "settle_s": _r(settle_s),
                "resolution_ms": STORM_SWEEP * 1e3,  # counting clients read every so often
                "presence_frames": run.presence,
                "expected_presence": expected,
                "frames": sum(c.frames for c in members) - frames0,
                "bytes": sum(c.bytes for c in members) - bytes0,
                "joined_members_max": max(c.joined_members for c in members),
                "server_cpu_s": _r(cpu1 - cpu0, 2),
                "loadgen_cpu_s": _r(own1 - own0, 2),
                # or it could not keep its own pace: the joins went out late
                "loadgen_saturated": (own1 - own0) / wall >= SATURATED_UTIL
                or joins_sent_s > spread * STORM_LATE,
                "server_rss_mb": _r(_rss(pids) / 1024, 1),
            }
            | others(busy1 - busy0, cpu1 - cpu0 + own1 - own0, wall)
            | _health(run)
        )
