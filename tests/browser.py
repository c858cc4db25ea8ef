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
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Locator, Page, async_playwright, expect

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


# --- the chat page (web/): shared by the browser test modules ---------------------------------

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


class ChatTabs:
    """Chat pages on one live server, each in a browser context of its own (its own storage,
    so its own anonymous identity). Uncaught page errors fail the test at exit.

    `async with ChatTabs(browser, url) as tabs: alice = await tabs.open("alice")`
    """

    def __init__(self, browser: Browser, url: str) -> None:
        self.browser = browser
        self.url = url
        self.contexts: list[BrowserContext] = []
        self.page_errors: list[str] = []

    async def open(
        self,
        name: str | None = None,
        room: str = "lobby",
        *,
        viewport: dict[str, int] = DESKTOP,
        phone: bool = False,
        token: str | None = None,
        before: Callable[[Page], Awaitable[None]] | None = None,
    ) -> Page:
        """/?name=<name>&token=<token>#<room> in a new context; `before(page)` runs first
        (routes, say)."""
        context = await self.browser.new_context(
            viewport={"width": viewport["width"], "height": viewport["height"]},
            is_mobile=phone,
            has_touch=phone,
            locale="en-US",
        )
        self.contexts.append(context)
        page = await context.new_page()
        label = name or token or "page"
        page.on("pageerror", lambda exc: self.page_errors.append(f"{label}: {exc}"))
        if before is not None:
            await before(page)
        query = "&".join(
            f"{key}={quote(value)}" for key, value in (("name", name), ("token", token)) if value
        )
        await page.goto(f"{self.url}/?{query}#{room}")
        return page

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for context in self.contexts:
            await context.close()
        if exc is None:
            assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"


async def ready(page: Page, room: str = "lobby") -> None:
    """Online, in `room`, and its `joined` has arrived."""
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "online")
    await expect(page.locator("body")).to_have_attribute("data-room", room)
    await expect(page.locator("body")).to_have_attribute("data-joined", "true")


def chats(page: Page, text: str | None = None) -> Locator:
    """Chat lines in the page's log (only those containing `text` when given)."""
    lines = page.get_by_role("log").get_by_test_id("chat")
    return lines if text is None else lines.filter(has_text=text)


def delivered(page: Page, text: str | None = None) -> Locator:
    """Chat lines the server has confirmed (they carry the message id)."""
    return chats(page, text).and_(page.locator("[data-id]"))


async def say(page: Page, text: str, *, button: bool = False) -> None:
    """Type `text` in the Message box and send it (Enter, or the Send button); wait for the
    server's echo (an echoed line carries the message id)."""
    box = page.get_by_label("Message", exact=True)
    await box.fill(text)
    if button:
        await page.get_by_role("button", name="Send", exact=True).click()
    else:
        await box.press("Enter")
    await expect(box).to_have_value("")
    await expect(delivered(page, text)).to_have_count(1)


def members(page: Page) -> Locator:
    return page.get_by_test_id("members").get_by_test_id("member")


async def member_ids(page: Page) -> list[str]:
    return [await m.get_attribute("data-user-id") or "" for m in await members(page).all()]


async def page_uid(page: Page) -> str:
    """The anonymous id this page's browser keeps (and sends as `uid`)."""
    uid = await page.evaluate("localStorage.getItem('gochat.uid')")
    assert isinstance(uid, str), uid
    return uid
