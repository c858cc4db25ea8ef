"""End to end: the browser client (web/) in headless Chromium against a live gochat server."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import pytest
from playwright.async_api import (
    Browser,
    FloatRect,
    Page,
    WebSocket,
    expect,
)

from gochat.chat.auth import mint

from .browser import (
    DESKTOP,
    OUTPUT,
    PHONE,
    ChatTabs,
    LiveServer,
    chats,
    member_ids,
    members,
    page_uid,
    ready,
    say,
    serve,
)
from .util import join, recv_type, until

pytestmark = pytest.mark.browser

HTML_TEXT = '<img src=x onerror="window.__xss=1"><b>bold</b>'

# A reconnect after a few refused upgrades waits out a backoff of up to a few seconds.
expect.set_options(timeout=10_000)


class OpenPage(Protocol):
    async def __call__(
        self, name: str, room: str = "lobby", *, viewport: dict[str, int] = ..., phone: bool = ...
    ) -> Page: ...


@pytest.fixture
async def server() -> AsyncIterator[LiveServer]:
    async with serve() as live:
        yield live


@pytest.fixture
async def open_page(server: LiveServer, browser: Browser) -> AsyncIterator[OpenPage]:
    """`await open_page("alice", "support")`: a tab of its own browser context (its own
    storage, so its own identity) on /?name=alice#support. Uncaught page errors fail the test."""
    async with ChatTabs(browser, server.url) as tabs:

        async def open_(
            name: str,
            room: str = "lobby",
            *,
            viewport: dict[str, int] = DESKTOP,
            phone: bool = False,
        ) -> Page:
            return await tabs.open(name, room, viewport=viewport, phone=phone)

        yield open_


# --- helpers -------------------------------------------------------------------------------


async def chat_ids(page: Page) -> list[str]:
    ids: list[str] = await chats(page).evaluate_all("lines => lines.map(l => l.dataset.id)")
    return ids


async def holds(condition: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Assert `condition` stays true for `seconds` (only where absence is the point)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        assert await condition(), f"no longer true: {what}"
        await asyncio.sleep(0.05)


def in_viewport(box: FloatRect | None, viewport: dict[str, int]) -> bool:
    return bool(
        box
        and box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= viewport["width"]
        and box["y"] + box["height"] <= viewport["height"]
    )


# --- tests ---------------------------------------------------------------------------------


async def test_two_tabs_chat_as_text_members_and_presence(open_page: OpenPage) -> None:
    alice = await open_page("alice")
    bob = await open_page("bob")
    await ready(alice)
    await ready(bob)
    await expect(alice.get_by_test_id("status")).to_have_text("Online")

    # Enter sends; text that looks like HTML stays text on every screen.
    await say(alice, HTML_TEXT)
    line = chats(bob, "bold")
    await expect(line).to_have_count(1)
    await expect(line).to_have_attribute("data-user-id", await page_uid(alice))
    for page in (alice, bob):
        texts = await chats(page).locator(".msg-text").all_text_contents()
        assert texts == [HTML_TEXT]
        await expect(page.get_by_role("log").locator("img, b")).to_have_count(0)
        assert await page.evaluate("typeof window.__xss") == "undefined"

    # The Send button sends too.
    await say(bob, "hi alice, plain text here", button=True)
    await expect(chats(alice, "hi alice, plain text here")).to_have_attribute(
        "data-user-id", await page_uid(bob)
    )

    for page in (alice, bob):
        await expect(members(page)).to_have_count(2)
        assert sorted(await member_ids(page)) == sorted(
            [await page_uid(alice), await page_uid(bob)]
        )
        await expect(page.get_by_test_id("member-count")).to_have_text("2")

    # bob's tab closes: his presence goes offline and alice's list drops him.
    await bob.context.close()
    await expect(members(alice)).to_have_count(1)
    assert await member_ids(alice) == [await page_uid(alice)]
    await expect(alice.get_by_test_id("member-count")).to_have_text("1")


async def test_a_reserved_name_is_not_taken_and_the_page_says_why(open_page: OpenPage) -> None:
    """The server refuses `system` with 400, which a page cannot see: so the page itself
    ignores the name, says why, and comes online as a guest instead of retrying for ever."""
    page = await open_page("System")
    await ready(page)
    await expect(page.get_by_test_id("errors")).to_contain_text("not system")
    await expect(page.get_by_test_id("name")).to_have_value(re.compile(r"^guest-"))
    name = page.get_by_test_id("name")
    await name.fill("admin")
    await name.press("Enter")
    await expect(page.get_by_test_id("errors")).to_contain_text("not system")
    await expect(name).to_have_value(re.compile(r"^guest-"))
    await expect(members(page).locator(".member-name")).to_have_text(re.compile(r"^guest-"))


async def test_room_from_fragment(open_page: OpenPage) -> None:
    alice = await open_page("alice", "support")
    bob = await open_page("bob", "lobby")
    await ready(alice, "support")
    await ready(bob, "lobby")
    await expect(alice).to_have_title(re.compile(r"^#support\b"))
    await expect(alice.get_by_test_id("room-title")).to_have_text("#support")
    await expect(bob.get_by_test_id("room-title")).to_have_text("#lobby")

    await say(alice, "only for support")
    # bob's own lobby message, echoed after alice's was, is the barrier: by then alice's
    # would have reached him too, were it routed to the lobby.
    await say(bob, "only for the lobby")
    await say(alice, "support again")
    await expect(chats(bob)).to_have_count(1)
    await expect(chats(bob, "support")).to_have_count(0)
    await expect(chats(alice)).to_have_count(2)
    await expect(chats(alice, "lobby")).to_have_count(0)
    assert await member_ids(alice) == [await page_uid(alice)]
    assert await member_ids(bob) == [await page_uid(bob)]


async def test_reconnect_recovers_missed_messages_once(
    server: LiveServer, open_page: OpenPage
) -> None:
    alice = await open_page("alice")
    await ready(alice)
    sent: list[dict[str, Any]] = []

    def watch(ws: WebSocket) -> None:
        ws.on("framesent", lambda payload: sent.append(json.loads(payload)))

    alice.on("websocket", watch)

    async with aiohttp.ClientSession(base_url=server.url) as session:
        carol = await session.ws_connect("/ws", params={"name": "carol"})
        await recv_type(carol, "welcome")
        await join(carol, "lobby")

        async def carol_says(text: str) -> str:
            await carol.send_json({"type": "chat", "room": "lobby", "text": text})
            echo = await recv_type(carol, "chat")
            assert echo["text"] == text
            return str(echo["id"])

        before_id = await carol_says("said before the restart")
        await expect(chats(alice, "said before the restart")).to_have_attribute(
            "data-id", before_id
        )

        # A "restart": alice's socket is closed with 1001 and new upgrades are refused
        # until the two messages below have been published.
        server.gate.close()
        server.hub.drop(await server.connection("alice"), 1001, "test restart")
        await until(lambda: not server.connections("alice"), what="alice disconnected")
        await expect(alice.get_by_test_id("status")).not_to_have_attribute("data-state", "online")
        await expect(alice.get_by_test_id("notice")).to_contain_text("restarting")
        await carol_says("missed while away 1")
        await carol_says("missed while away 2")
        assert not server.connections("alice"), "alice got back in while the gate was closed"
        server.gate.open()

        # She comes back by herself, asks for what she missed, and shows it once.
        await ready(alice)
        await expect(alice.get_by_test_id("notice")).to_be_hidden()
        await carol_says("said after the reconnect")  # barrier: anything late is in by now
        await expect(chats(alice, "said after the reconnect")).to_have_count(1)
        await carol.close()

    for text in ("said before the restart", "missed while away 1", "missed while away 2"):
        await expect(chats(alice, text)).to_have_count(1)
    ids = await chat_ids(alice)
    assert len(ids) == 4 and len(set(ids)) == 4, ids
    await expect(alice.locator('[data-testid="system"][data-kind="gap"]')).to_have_count(0)
    joins = [frame for frame in sent if frame.get("type") == "join"]
    assert joins == [{"type": "join", "room": "lobby", "since": before_id}], sent


@pytest.mark.slow
async def test_kick_stops_until_reconnect(server: LiveServer, open_page: OpenPage) -> None:
    alice = await open_page("alice")
    await ready(alice)
    sockets: list[WebSocket] = []
    alice.on("websocket", lambda ws: sockets.append(ws))
    status = alice.get_by_test_id("status")

    server.hub.drop(await server.connection("alice"), 4001, "bye")
    await expect(status).to_have_attribute("data-state", "stopped")
    notice = alice.get_by_test_id("notice")
    await expect(notice).to_be_visible()
    await expect(alice.get_by_test_id("notice-text")).to_contain_text(
        re.compile(r"operator.*: bye$", re.IGNORECASE)
    )
    reconnect = alice.get_by_role("button", name="Reconnect", exact=True)
    await expect(reconnect).to_be_visible()
    await expect(alice.locator("body")).to_have_attribute("data-joined", "false")

    async def still_stopped() -> bool:
        return (
            await status.get_attribute("data-state") == "stopped"
            and await reconnect.is_visible()
            and not sockets
            and not server.connections("alice")
        )

    # The first automatic retry would come within 0.5 s: nothing may happen in 1.5 s.
    await holds(still_stopped, 1.5, "stopped, no new socket, Reconnect offered")

    await reconnect.click()
    await ready(alice)
    await expect(notice).to_be_hidden()
    assert len(sockets) == 1
    await server.connection("alice")
    await say(alice, "back after the kick")


@pytest.mark.slow
async def test_phone_and_desktop_layout(open_page: OpenPage) -> None:
    OUTPUT.mkdir(exist_ok=True)
    desktop = await open_page("alice")
    phone = await open_page("bob", viewport=PHONE, phone=True)
    await ready(desktop)
    await ready(phone)
    await say(desktop, "Hello from the desktop. Is the layout fine on your phone?")
    await say(phone, "Yes: the message box and the Send button fit on the screen.", button=True)
    await say(desktop, HTML_TEXT)
    await expect(chats(phone)).to_have_count(3)

    for page, viewport in ((phone, PHONE), (desktop, DESKTOP)):
        box = page.get_by_label("Message", exact=True)
        send = page.get_by_role("button", name="Send", exact=True)
        await expect(box).to_be_visible()
        await expect(send).to_be_visible()
        await expect(box).to_be_in_viewport()
        await expect(send).to_be_in_viewport()
        for what, locator in (("message box", box), ("Send button", send)):
            bounds = await locator.bounding_box()
            assert in_viewport(bounds, viewport), (what, viewport, bounds)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], f"horizontal scroll at {viewport}: {width}px"

    await desktop.screenshot(path=OUTPUT / "browser-desktop.png")
    await phone.screenshot(path=OUTPUT / "browser-phone.png")


SECRET = "browser-test-secret-0123456789abcdef"


@pytest.mark.slow
async def test_token_from_the_address_bar(browser: Browser) -> None:
    """With client auth on, `/?token=` signs the page in as the token's user; a bad token
    stops on a refusal notice after one attempt (and one HTTP check), with no retry loop."""
    async with serve(auth_secret=SECRET) as live:
        context = await browser.new_context()
        try:
            good = await context.new_page()
            await good.goto(f"{live.url}/?token={mint(SECRET, 'u-42', 'Zoë')}#lobby")
            await ready(good)
            identity = good.get_by_test_id("identity")
            await expect(identity.locator("strong")).to_have_text("Zoë")
            await expect(identity).to_have_attribute("title", "userId u-42")
            await say(good, "signed in by token")

            sockets: list[WebSocket] = []
            probes: list[int] = []
            bad = await context.new_page()
            bad.on("websocket", lambda ws: sockets.append(ws))
            bad.on(
                "response",
                lambda r: probes.append(r.status) if "/ws?" in r.url else None,
            )
            forged = mint("some-other-secret-0123456789abcdef", "u-42", "Zoë")
            await bad.goto(f"{live.url}/?token={forged}#lobby")
            status = bad.get_by_test_id("status")
            await expect(status).to_have_attribute("data-state", "stopped")
            await expect(bad.get_by_test_id("notice-text")).to_contain_text("check the token")
            reconnect = bad.get_by_role("button", name="Reconnect", exact=True)
            await expect(reconnect).to_be_visible()

            async def still_stopped() -> bool:
                return (
                    await status.get_attribute("data-state") == "stopped"
                    and len(sockets) == 1
                    and probes == [401]
                )

            # the first automatic retry would come within 0.5 s: nothing may happen in 1.5 s
            await holds(still_stopped, 1.5, "one socket, one 401 check, no retries")
            assert [c.user_id for c in live.hub.clients.values()] == ["u-42"]
        finally:
            await context.close()
