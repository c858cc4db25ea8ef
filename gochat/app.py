"""`create_app`: assemble the aiohttp application (synchronous, no I/O)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from .aiohttp_internals import detect, log_fast_paths
from .api import add_api
from .assets import asset_dir
from .brokers import Broker, create_broker
from .chat.client import Client
from .chat.firstframe import FirstFrameWatch
from .chat.heartbeat import PING_FRAME, Heartbeat
from .chat.hub import Hub
from .chat.ws import chat_ws
from .config import Settings
from .console.auth import LoginThrottle
from .console.keys import CONSOLE
from .console.views import add_admin
from .events import EventTap
from .gcfreeze import CollectorCalm
from .keys import BROKER, FAST_PATHS, FIRST_FRAME, HUB, SETTINGS, TAP
from .protocol import CloseCode

STATIC_NAME = r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}\.(?:js|css|svg|png|ico|webmanifest)"

# Pages may load only our own scripts, styles and images, and talk only to our own server.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@asynccontextmanager
async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the broker's listener; on cleanup leave the cluster cleanly, within what is
    left of the shutdown grace."""
    broker = app[BROKER]
    await broker.start()
    yield
    await broker.stop(app[HUB].shutdown_time_left())


async def shutdown_clients(app: web.Application) -> None:
    """on_shutdown: every client gets close 1001 while the broker is still up."""
    await app[HUB].shutdown()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    hub = request.app[HUB]
    if hub.closing:
        return web.json_response({"status": "unavailable", "reason": "shutting down"}, status=503)
    if not broker.ready:
        return web.json_response(
            {"status": "unavailable", "broker": broker.kind, "reason": broker.reason}, status=503
        )
    return web.json_response({"status": "ready", "broker": broker.kind})


def add_web_client(app: web.Application) -> None:
    """The browser client: `/` and the flat files next to it (no index, no traversal)."""
    root = asset_dir("web")

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(root / "index.html")

    async def static_file(request: web.Request) -> web.FileResponse:
        path = root / request.match_info["name"]
        if path.is_symlink() or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    app.router.add_get("/", index)
    app.router.add_get("/{name:" + STATIC_NAME + "}", static_file)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if response.status != 101:
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)


def add_first_frame_watch(app: web.Application, hub: Hub, timeout: float) -> None:
    """/ws closes 1008 a connection that sends no message within `timeout` of its upgrade."""

    def silent(client: Client) -> None:
        hub.drop(client, CloseCode.POLICY, f"no frame within {timeout:g}s")

    watch = app[FIRST_FRAME] = FirstFrameWatch(timeout, silent)

    async def stop(app: web.Application) -> None:
        watch.stop()

    app.on_cleanup.append(stop)


def add_heartbeat(app: web.Application, hub: Hub, interval: float) -> None:
    """Ping quiet connections every `interval` s; abort those that do not answer."""

    def ping(client: Client) -> None:
        hub.send_frame(client, PING_FRAME)

    beat = Heartbeat(interval, hub.clients.values, ping, hub.abort_dead)

    async def start(app: web.Application) -> None:
        beat.start()

    async def stop(app: web.Application) -> None:
        beat.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def add_collector_calm(app: web.Application, hub: Hub) -> None:
    """Freeze the long-lived objects of connections as they accumulate (gcfreeze.py)."""
    calm = CollectorCalm(lambda: len(hub.clients))

    async def start(app: web.Application) -> None:
        calm.start()

    async def stop(app: web.Application) -> None:
        calm.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def create_app(
    settings: Settings | None = None, *, broker: Broker | None = None
) -> web.Application:
    """One application: /ws, /healthz, /readyz, the browser client at /, the console at
    /admin and /metrics."""
    settings = settings if settings is not None else Settings.from_env()
    # aiohttp arms its keep-alive timer when a connection is made and does not reset it on
    # partial data, so a peer that never completes its request (slowloris) is dropped
    # after this long; it is also the idle limit between keep-alive requests.
    app = web.Application(handler_args={"keepalive_timeout": settings.handshake_timeout or 75.0})
    app[SETTINGS] = settings
    fast = app[FAST_PATHS] = detect(settings.fast_paths)
    log_fast_paths(fast)
    tap = app[TAP] = EventTap(settings.node_id)
    broker = app[BROKER] = broker if broker is not None else create_broker(settings)
    hub = app[HUB] = Hub(settings, broker, tap)
    if settings.handshake_timeout:
        add_first_frame_watch(app, hub, settings.handshake_timeout)
    add_heartbeat(app, hub, settings.heartbeat)
    add_collector_calm(app, hub)

    app.router.add_get("/ws", chat_ws)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_web_client(app)

    app.cleanup_ctx.append(broker_ctx)
    add_admin(app)  # after broker_ctx: the console's ticker stops before the broker
    add_api(app, app[CONSOLE], LoginThrottle())  # /api: its kick and notice are the console's
    app.on_shutdown.append(shutdown_clients)
    app.on_response_prepare.append(_security_headers)
    return app
