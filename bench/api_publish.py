"""The API scenario: how fast the server API publishes, against a WebSocket publisher.

One gochat process (GOCHAT_API_KEY set), `members` WebSocket clients in one room, two phases
in one run, so the pair is measured on the same server, clients and room:

1. **api**: `concurrency` aiohttp requests in flight, each `POST /api/rooms/bench/messages`
   over a kept-alive connection, the next one sent as soon as one is answered (closed loop):
   the requests per second one server core answers, and the deliveries they cause.
2. **ws**: one member publishes the same messages (same 64-byte texts) over its WebSocket at
   the rate the API reached, open loop: what the same traffic costs through the chat's path.

Each phase reports the window's rate, server CPU, µs of server CPU per message and per
delivery, and (probes) delivery latency; the API phase also the request latency. Every
member must receive every message of each phase exactly once (order is checked per phase:
the API's concurrent requests may reach the server in another order than their sequence
numbers, so its `reordered` counts that, not a fault).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp

from bench.loadgen import (
    TEXT_SIZE,
    Target,
    Window,
    _drain,
    _health,
    _latency,
    _ns_at,
    _publish,
    _r,
    _stream_totals,
    chat_frame,
    chat_text,
    freeze_gc,
    percentile,
    probe_indices,
    session,
    setup,
)

ROOM = "bench"
OPEN_ENDED = 1 << 40  # the API phase's last sequence number is not known in advance


async def run_api_publish(
    url: str,
    api_key: str,
    *,
    members: int = 50,
    concurrency: int = 8,
    duration: float = 5.0,
    warmup: float = 1.0,
    probes: int = 3,
    pids: Sequence[int] = (),
    drain_timeout: float = 10.0,
    setup_timeout: float = 60.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two phases' results: (api, ws)."""
    target = Target.parse(url)
    probe_ids = probe_indices(members, probes)
    async with session() as run:
        clients, settled = await setup(
            run,
            [target],
            members,
            probe_ids,
            lambda i: ROOM,
            members * (members - 1) // 2,
            setup_timeout,
        )
        freeze_gc()
        common: dict[str, Any] = {
            "clients": members,
            "rooms": 1,
            "text_bytes": TEXT_SIZE,
            "probes": len(probe_ids),
            "presence_settled": settled,
        }

        # --- 1: the API, closed loop
        for c in clients:
            c.expect({0: OPEN_ENDED})
        window = Window(run, pids, {})
        start = run.loop.time() + 0.05
        stop = start + warmup + duration
        w0 = _ns_at(start + warmup, run.loop)
        measure = asyncio.create_task(window.measure(start + warmup, duration))
        post_url = f"http://{target.host}:{target.port}/api/rooms/{ROOM}/messages"
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        statuses: Counter[int] = Counter()
        http_ns: list[tuple[int, int]] = []  # (sent, latency) of each answered request
        seq = 0

        async def worker(http: aiohttp.ClientSession) -> None:
            nonlocal seq
            while run.loop.time() < stop:
                k, seq = seq, seq + 1
                sent = time.monotonic_ns()
                body = b'{"text":"' + chat_text(k, 0, sent).encode() + b'"}'
                async with http.post(post_url, data=body, headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
                http_ns.append((sent, time.monotonic_ns() - sent))
                window.sent += 1  # answered: the window's rate is answers per second

        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            await asyncio.sleep(max(0.0, start - run.loop.time()))
            async with asyncio.TaskGroup() as tg:
                for _ in range(concurrency):
                    tg.create_task(worker(http))
        await measure
        sent_api = seq
        for c in clients:  # now the last one is known: the drain waits for it
            c.streams[0].last = sent_api - 1
        drained = await _until_received(run, clients, sent_api, drain_timeout)
        api: dict[str, Any] = common | {
            "concurrency": concurrency,
            "messages": sent_api,
            "drained": drained,
        }
        api |= window.result()
        api |= _per_message(api)
        api |= _stream_totals(clients)
        api |= _latency(run, w0, w0 + int(duration * 1e9))
        lat = sorted(v / 1e6 for s, v in http_ns if w0 <= s < w0 + duration * 1e9)
        api["request_ms"] = {
            "p50": _r(percentile(lat, 50)),
            "p99": _r(percentile(lat, 99)),
            "max": _r(lat[-1] if lat else None),
        }
        api["http_status"] = {str(k): v for k, v in sorted(statuses.items())}
        api |= _health(run)

        # --- 2: a WebSocket member, the same messages at the rate the API reached
        rate = api.get("offered_rate") or 1.0
        total = max(1, round(rate * (warmup + duration)))
        for c in clients:
            c.expect({1: total - 1})
        run.done = 0  # the API phase's streams, once their last was known, finished too
        run.all_done.clear()
        run.expect_done(len(clients))
        window = Window(run, pids, {})
        start = run.loop.time() + 0.05
        w0 = _ns_at(start + warmup, run.loop)
        measure = asyncio.create_task(window.measure(start + warmup, duration))
        pub = clients[0]

        def send(k: int, sent_ns: int) -> None:
            pub.write(chat_frame(ROOM, k, 1, sent_ns))

        await _publish(window, rate, total, start, send)
        await measure
        drained = await _drain(run, drain_timeout)
        ws: dict[str, Any] = common | {"rate": _r(rate, 1), "messages": total, "drained": drained}
        ws |= window.result()
        ws |= _per_message(ws)
        ws |= _stream_totals(clients)
        ws |= _latency(run, w0, w0 + int(duration * 1e9))
        ws |= _health(run)
        return api, ws


def _per_message(res: dict[str, Any]) -> dict[str, Any]:
    """Server CPU per published message (the publish path plus its fan-out)."""
    msgs = res.get("offered_msgs")
    cpu = res.get("server_cpu_s")
    return {"us_per_message": _r(cpu / msgs * 1e6, 1) if msgs and cpu is not None else None}


async def _until_received(run: Any, clients: Sequence[Any], n: int, timeout: float) -> bool:
    """Wait until every client has received `n` distinct messages (False after `timeout`)."""
    deadline = run.loop.time() + timeout
    while True:
        if run.sweeper is not None:
            await run.sweeper.sweep()
        if all(c.streams[0].count >= n for c in clients):
            return True
        if run.loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
