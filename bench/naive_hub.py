"""The naive hub: the yardstick the benchmarks measure gochat against.

This is the design of the aiohttp chat demo: a dict of sockets per room, and for every chat
message one `await ws.send_str(...)` per member, in a loop. It speaks the protocol subset the
benchmarks use (welcome, join -> joined, chat fan-out) and nothing else: no presence, no
history, no limits. Run it as `python bench/naive_hub.py --port N`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import uuid

from aiohttp import WSMsgType, web

ROOMS = web.AppKey("rooms", dict[str, set[web.WebSocketResponse]])
IDS = web.AppKey("ids", itertools.count)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def chat_ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    rooms, ids = request.app[ROOMS], request.app[IDS]
    user_id, name = uuid.uuid4().hex[:12], request.query.get("name", "anon")[:32]
    await ws.send_str(
        json.dumps({"type": "welcome", "userId": user_id, "name": name, "node": "naive"})
    )
    joined: set[str] = set()
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
                kind, room = data["type"], str(data["room"])
            except (ValueError, KeyError, TypeError):
                continue
            if kind == "join":
                rooms.setdefault(room, set()).add(ws)
                joined.add(room)
                reply = {"type": "joined", "room": room, "members": [], "history": []}
                await ws.send_str(json.dumps(reply))
            elif kind == "chat" and room in joined:
                text, ts = str(data.get("text", "")), time.time_ns() // 1_000_000
                chat = {"type": "chat", "id": str(next(ids)), "room": room, "userId": user_id}
                out = json.dumps(chat | {"name": name, "text": text, "ts": ts})
                for peer in list(rooms.get(room, ())):
                    try:
                        await peer.send_str(out)  # one await per member: the naive part
                    except ConnectionError:
                        pass
    finally:
        for room in joined:
            rooms[room].discard(ws)
    return ws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app[ROOMS], app[IDS] = {}, itertools.count(1)
    app.add_routes([web.get("/ws", chat_ws), web.get("/healthz", healthz)])
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, backlog=1024)


if __name__ == "__main__":
    main()
