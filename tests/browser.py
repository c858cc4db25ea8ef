"""Browser-test plumbing: a live gochat server on a real port and a headless Chromium.

Both are async context managers, so a test module turns them into fixtures of its own
event loop (pytest-asyncio runs each test in a fresh loop; Playwright and aiohttp objects
must not outlive it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, async_playwright

from gochat.app import create_app
from gochat.chat.client import Client
from gochat.chat.hub import Hub
from gochat.keys import HUB

from .util import ROOT, make_settings, until

CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = ROOT / "test-output"  # screenshots
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@dataclass
class UpgradeGate:
    """While closed, new `/ws` upgrades get 503 (as during a restart); open sockets stay."""

    is_open: bool = True

    def close(self) -> None:
        self.is_open = False

    def open(self) -> None:
        self.is_open = True

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not self.is_open and request.path == "/ws":
            raise web.HTTPServiceUnavailable(text="test gate: restarting")
        return await handler(request)


@dataclass
class LiveServer:
    """A gochat app served on 127.0.0.1 at `url`."""

    app: web.Application
    url: str
    gate: UpgradeGate = field(default_factory=UpgradeGate)

    @property
    def hub(self) -> Hub:
        return self.app[HUB]

    def connections(self, name: str) -> list[Client]:
        """This node's open connections whose display name is `name`."""
        return [c for c in self.hub.clients.values() if c.name == name]

    async def connection(self, name: str) -> Client:
        """The single connection named `name` (waits until there is exactly one)."""
        await until(lambda: len(self.connections(name)) == 1, what=f"one connection of {name}")
        return self.connections(name)[0]


@asynccontextmanager
async def serve(**settings: Any) -> AsyncIterator[LiveServer]:
    """Run gochat (test settings plus `settings`) on a free port of 127.0.0.1."""
    app = create_app(make_settings(**settings))
    gate = UpgradeGate()
    app.middlewares.append(gate.middleware)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)  # port 0: the OS picks a free one
        await site.start()
        host, port = runner.addresses[0][:2]
        yield LiveServer(app, f"http://{host}:{port}", gate)
    finally:
        await runner.cleanup()


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Headless Debian Chromium driven by Playwright (no browser download involved)."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} not found: the browser tests need Debian's Chromium "
            "(apt-get install chromium); Playwright's own browsers are not used",
            pytrace=False,
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()
