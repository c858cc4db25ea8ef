"""The browser chat client as people use it (issue 19): refused and resent messages, operator
notices, right-to-left text, the new-messages cue, renames and shared names, phones.

Headless Debian Chromium against a live gochat server (tests/browser.py). Screenshots go to
test-output/.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, WebSocketRoute, expect

from gochat.chat.auth import mint

from .browser import (
    OUTPUT,
    PHONE,
    ChatTabs,
    LiveServer,
    chats,
    delivered,
    member_ids,
    members,
    page_uid,
    ready,
    say,
    serve,
)
from .console import BEARER, TOKEN
from .util import join, recv_type

pytestmark = pytest.mark.browser

# A reconnect after a few refused upgrades waits out a backoff of up to a few seconds.
expect.set_options(timeout=10_000)

SECRET = "browser-chat-secret-0123456789abcdef"
# Each of these is one line's text; the time is "hh:mm AM" in the en-US locale the tabs use.
ARABIC = "مرحبا بالجميع، كيف حالكم اليوم؟"
HEBREW = "שלום לכולם, מה שלומכם?"
MIXED = "Hello שלום and مرحبا, all in one line"
EMOJI = "🎉👍🏽 ❤️ 🇫🇷"
CJK = "你好，世界！こんにちは 안녕하세요"
TIME = re.compile(r"^\d{1,2}:\d{2}( [AP]M)?$")


@pytest.fixture
async def server() -> AsyncIterator[LiveServer]:
    async with serve(admin_token=TOKEN) as live:
        yield live


@pytest.fixture
async def tabs(server: LiveServer, browser: Browser) -> AsyncIterator[ChatTabs]:
    async with ChatTabs(browser, server.url) as chat_tabs:
        yield chat_tabs


# --- helpers -------------------------------------------------------------------------------


def box(page: Page) -> Any:
    return page.get_by_label("Message", exact=True)


def unconfirmed(page: Page) -> Any:
    """Own messages still queued or sent without an answer ("sending…")."""
    return page.locator('[data-testid="chat"][data-state="queued"], [data-state="sent"]')


def failed(page: Page) -> Any:
    return page.locator('[data-testid="chat"][data-state="failed"]')


async def burst(page: Page, count: int, prefix: str) -> None:
    """`count` messages typed and sent as fast as the page takes them (one task of the page)."""
    await page.evaluate(
        """([count, prefix]) => {
            const input = document.querySelector('[data-testid="message-input"]');
            const form = document.querySelector('[data-testid="composer"]');
            for (let i = 0; i < count; i += 1) {
                input.value = `${prefix} ${i}`;
                form.requestSubmit();
            }
        }""",
        [count, prefix],
    )


async def notice(server: LiveServer, room: str, text: str) -> None:
    """An operator notice through the console's API, as the console's form sends it."""
    async with aiohttp.ClientSession(base_url=server.url) as session:
        async with session.post(
            "/admin/api/notice", json={"room": room, "text": text}, headers=BEARER
        ) as resp:
            assert resp.status == 200, await resp.text()


async def chat_frames(page: Page, frames: list[dict[str, Any]]) -> None:
    """Record every frame the page sends on its sockets."""
    page.on(
        "websocket",
        lambda ws: ws.on("framesent", lambda payload: frames.append(json.loads(payload))),
    )


# --- 1. refused messages, folded errors, pacing ------------------------------------------


@pytest.mark.slow
async def test_a_burst_over_the_rate_limit_leaves_nothing_sending(browser: Browser) -> None:
    """40 messages at once against a server that takes 5 a second (bursts of 10): each ends
    delivered or marked not sent, with one folded error line, and Retry sends it later."""
    OUTPUT.mkdir(exist_ok=True)
    async with serve(rate=5) as live, ChatTabs(browser, live.url) as tabs:
        alice = await tabs.open("alice")
        await ready(alice)
        await burst(alice, 40, "burst")
        await expect(unconfirmed(alice)).to_have_count(0, timeout=30_000)

        sent = await delivered(alice, "burst").count()
        refused = await failed(alice).count()
        assert sent + refused == 40, (sent, refused)
        assert refused >= 1 and sent >= 10, (sent, refused)
        await expect(failed(alice).first.get_by_test_id("msg-status")).to_have_text(
            "not sent (too fast)"
        )
        # one line for every refusal, not a stack of identical banners
        errors = alice.get_by_test_id("errors").get_by_test_id("error")
        await expect(errors).to_have_count(1)
        await expect(errors).to_contain_text(f"Slow down: {refused} messages not sent.")
        # what the server published is what the page shows as delivered, each once
        async with aiohttp.ClientSession(base_url=live.url) as session:
            observer = await session.ws_connect("/ws", params={"name": "observer"})
            await recv_type(observer, "welcome")
            history = (await join(observer, "lobby"))["history"]
            await observer.close()
        published = sorted(m["text"] for m in history if m["text"].startswith("burst"))
        shown = await delivered(alice, "burst").locator(".msg-text").all_text_contents()
        assert published == sorted(shown), (published, shown)
        await alice.screenshot(path=OUTPUT / "chat-refused.png")

        # Retry sends the same message again (same cid) once the server has room for it
        first = failed(alice).first
        cid = await first.get_attribute("data-cid")
        await first.get_by_role("button", name="Retry", exact=True).click()
        again = alice.locator(f'[data-testid="chat"][data-cid="{cid}"]')
        await expect(again).to_have_count(1)
        await expect(again).to_have_attribute("data-id", re.compile(r"."))
        await expect(failed(alice)).to_have_count(refused - 1)


@pytest.mark.slow
async def test_sixty_fast_sends_are_paced_under_the_default_limit(browser: Browser) -> None:
    """The client keeps under the server's default 20 a second (bursts of 40) by itself:
    60 messages at once all arrive, in order, none refused."""
    async with serve(rate=20) as live, ChatTabs(browser, live.url) as tabs:
        alice = await tabs.open("alice")
        await ready(alice)
        await burst(alice, 60, "paced")
        await expect(delivered(alice, "paced")).to_have_count(60, timeout=20_000)
        await expect(failed(alice)).to_have_count(0)
        await expect(alice.get_by_test_id("errors").get_by_test_id("error")).to_have_count(0)
        texts = await delivered(alice, "paced").locator(".msg-text").all_text_contents()
        assert texts == [f"paced {i}" for i in range(60)]


# --- 8 and 6. sent once, whatever the network does ---------------------------------------


class Relay:
    """A page's /ws through Playwright: frames pass both ways and are recorded. With `lose`
    set, the server's chat with that text is swallowed and the page's socket then cut with
    1001, as a restart between the publish and the echo would; with `strip` set too, the
    next `joined` leaves that message out of its history (a history that no longer holds
    it), so the page can only learn its fate by sending it again."""

    def __init__(self, lose: str, *, strip: bool) -> None:
        self.lose = lose
        self.strip = strip
        self.lost: dict[str, Any] | None = None
        self.sent: list[dict[str, Any]] = []
        self.cuts: list[asyncio.Task[None]] = []

    async def route(self, page_side: WebSocketRoute) -> None:
        server_side = page_side.connect_to_server()

        def to_server(message: str | bytes) -> None:
            self.sent.append(json.loads(message))
            server_side.send(message)

        def to_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if self.lost is None and frame["type"] == "chat" and frame["text"] == self.lose:
                self.lost = frame
                self.cuts.append(asyncio.create_task(cut()))
                return
            if self.strip and self.lost is not None and frame["type"] == "joined":
                lost_id = self.lost["id"]
                frame["history"] = [m for m in frame["history"] if m["id"] != lost_id]
                message = json.dumps(frame)
            page_side.send(message)

        async def cut() -> None:
            await page_side.close(code=1001, reason="test restart")
            await server_side.close()

        page_side.on_message(to_server)
        server_side.on_message(to_page)

    def chats_sent(self, text: str) -> list[dict[str, Any]]:
        return [f for f in self.sent if f.get("type") == "chat" and f.get("text") == text]


async def relayed(tabs: ChatTabs, name: str, relay: Relay) -> Page:
    async def route(page: Page) -> None:
        await page.route_web_socket(re.compile(r"/ws\?"), relay.route)

    return await tabs.open(name, before=route)


async def test_an_echo_lost_in_a_restart_is_confirmed_by_history(tabs: ChatTabs) -> None:
    """The server published it, the page never saw it: the rejoin's history confirms it,
    so the page does not send it again."""
    text = "published, echo lost"
    relay = Relay(text, strip=False)
    bob = await tabs.open("bob")
    alice = await relayed(tabs, "alice", relay)
    await ready(bob)
    await ready(alice)

    await box(alice).fill(text)
    await box(alice).press("Enter")
    await expect(alice.get_by_test_id("notice")).to_contain_text("restarting")
    await ready(alice)
    await expect(delivered(alice, text)).to_have_count(1)
    assert relay.lost is not None
    await expect(delivered(alice, text)).to_have_attribute("data-id", relay.lost["id"])
    await say(alice, "after the restart")  # barrier: a resend would have come before it
    await expect(delivered(bob, "after the restart")).to_have_count(1)
    await expect(chats(bob, text)).to_have_count(1)
    await expect(chats(alice, text)).to_have_count(1)
    assert len(relay.chats_sent(text)) == 1, relay.sent
    await asyncio.gather(*relay.cuts)


async def test_a_message_sent_while_the_server_restarts_arrives_once(tabs: ChatTabs) -> None:
    """The server published it, the page never saw it and the history does not show it:
    the page sends it again with the same cid, and the server answers with the original
    (same id) instead of publishing it twice. Needs the server's cid de-duplication."""
    text = "sent during the restart"
    relay = Relay(text, strip=True)
    bob = await tabs.open("bob")
    alice = await relayed(tabs, "alice", relay)
    await ready(bob)
    await ready(alice)

    await box(alice).fill(text)
    await box(alice).press("Enter")
    await expect(alice.get_by_test_id("notice")).to_contain_text("restarting")
    await ready(alice)
    await expect(delivered(alice, text)).to_have_count(1)
    sent = relay.chats_sent(text)
    assert len(sent) == 2 and sent[0]["cid"] == sent[1]["cid"], sent  # resent, same cid
    assert relay.lost is not None
    await expect(delivered(alice, text)).to_have_attribute("data-id", relay.lost["id"])
    await say(alice, "after the restart")  # barrier: a second publish would come before it
    await expect(delivered(bob, "after the restart")).to_have_count(1)
    await expect(chats(bob, text)).to_have_count(1)
    await expect(chats(alice, text)).to_have_count(1)
    await asyncio.gather(*relay.cuts)


async def test_typed_while_offline_is_sent_once_when_back(
    server: LiveServer, tabs: ChatTabs
) -> None:
    """While the server restarts, Enter and Send still take a message (queued, marked
    offline); it goes out once after the rejoin, and no stale error stays behind."""
    bob = await tabs.open("bob")
    alice = await tabs.open("alice")
    await ready(bob)
    await ready(alice)
    frames: list[dict[str, Any]] = []
    await chat_frames(alice, frames)

    server.gate.close()
    server.hub.drop(await server.connection("alice"), 1001, "test restart")
    status = alice.get_by_test_id("status")
    await expect(status).to_contain_text("Offline")
    await box(alice).fill("typed while offline")
    await box(alice).press("Enter")
    await box(alice).fill("sent with the button while offline")
    await alice.get_by_role("button", name="Send", exact=True).click()
    await expect(box(alice)).to_have_value("")
    waiting = alice.get_by_test_id("chat").filter(has_text="while offline")
    await expect(waiting).to_have_count(2)
    await expect(waiting.get_by_test_id("msg-status")).to_have_text(
        ["offline: will send when reconnected"] * 2
    )
    await expect(alice.get_by_test_id("errors").get_by_test_id("error")).to_have_count(0)
    server.gate.open()

    await ready(alice)
    await expect(delivered(alice, "while offline")).to_have_count(2)
    await say(bob, "barrier")
    await expect(delivered(alice, "barrier")).to_have_count(1)
    await expect(chats(bob, "typed while offline")).to_have_count(1)
    await expect(chats(bob, "sent with the button while offline")).to_have_count(1)
    texts = [f["text"] for f in frames if f.get("type") == "chat"]
    assert texts == ["typed while offline", "sent with the button while offline"], frames
    await expect(status).to_have_text("Online")
    await expect(alice.get_by_test_id("errors").get_by_test_id("error")).to_have_count(0)


# --- 2. notices ------------------------------------------------------------------------


async def test_a_notice_is_a_banner_a_user_named_system_is_not(browser: Browser) -> None:
    async with (
        serve(admin_token=TOKEN, auth_secret=SECRET) as live,
        ChatTabs(browser, live.url) as tabs,
    ):
        olga = await tabs.open(token=mint(SECRET, "u-olga", "Olga"))
        impostor = await tabs.open(token=mint(SECRET, "u-sys", "System"))
        await ready(olga)
        await ready(impostor)
        await say(impostor, "Server restarts at 10:00")
        await notice(live, "lobby", "Server restarts at 11:00")

        banner = olga.get_by_role("log").get_by_test_id("operator-notice")
        await expect(banner).to_have_count(1)
        await expect(banner).to_contain_text("Server restarts at 11:00")
        await expect(banner).to_contain_text("Notice from the operators")
        await expect(banner).not_to_have_class(re.compile(r"\bmsg\b"))
        await expect(banner.locator(".msg-name")).to_have_count(0)
        await expect(chats(olga, "11:00")).to_have_count(0)

        fake = chats(olga, "Server restarts at 10:00")
        await expect(fake).to_have_count(1)
        await expect(fake).to_have_class(re.compile(r"\bmsg\b"))
        await expect(fake).to_have_attribute("data-user-id", "u-sys")
        await expect(fake.locator("bdi.msg-name")).to_have_text("System")
        await expect(fake.get_by_test_id("operator-notice")).to_have_count(0)

        def look(loc: Any) -> Any:
            return loc.evaluate(
                "e => { const s = getComputedStyle(e);"
                " return [s.backgroundColor, s.borderLeftWidth, s.borderTopColor]; }"
            )

        assert await look(banner) != await look(fake)


# --- 3. right-to-left and other scripts -----------------------------------------------------


async def test_rtl_names_and_texts(tabs: ChatTabs) -> None:
    sara = await tabs.open("سارة")
    bob = await tabs.open("bob")
    await ready(sara)
    await ready(bob)
    await say(sara, ARABIC)
    for text in (HEBREW, MIXED, EMOJI, CJK):
        await say(bob, text)
    await expect(chats(sara)).to_have_count(5)

    for page in (sara, bob):
        line = chats(page, ARABIC)
        name = line.locator(".msg-name")
        time = line.locator("time")
        assert await name.evaluate("e => e.tagName") == "BDI"
        await expect(name).to_have_text("سارة")
        await expect(time).to_have_text(TIME)
        # the time is one box, after the name: no "03:34 سارة AM"
        assert await time.evaluate("e => e.getClientRects().length") == 1
        name_box, time_box = await name.bounding_box(), await time.bounding_box()
        assert name_box and time_box
        assert time_box["x"] >= name_box["x"] + name_box["width"], (name_box, time_box)

        for text, direction in (
            (ARABIC, "rtl"),
            (HEBREW, "rtl"),
            (MIXED, "ltr"),
            (EMOJI, "ltr"),
            (CJK, "ltr"),
        ):
            body = chats(page, text).locator(".msg-text")
            await expect(body).to_have_text(text)
            assert await body.evaluate(f"e => e.matches(':dir({direction})')"), (text, direction)
        # right-to-left text starts at the right edge of its line
        body = chats(page, ARABIC).locator(".msg-text")
        right = await body.evaluate(
            "e => { const r = document.createRange(); r.selectNodeContents(e);"
            " return [r.getBoundingClientRect().right, e.getBoundingClientRect().right]; }"
        )
        assert abs(right[0] - right[1]) < 2, right

    # the Message box follows what is typed in it
    await box(bob).fill(HEBREW)
    assert await box(bob).evaluate("e => e.matches(':dir(rtl)')")
    await box(bob).fill(CJK)
    assert await box(bob).evaluate("e => e.matches(':dir(ltr)')")
    # members: the name isolated there too
    await expect(members(bob).locator("bdi.member-name")).to_have_text(["bob", "سارة"])


# --- 4. the new-messages cue ----------------------------------------------------------------


async def test_new_messages_cue_while_scrolled_up(server: LiveServer, tabs: ChatTabs) -> None:
    alice = await tabs.open("alice")
    await ready(alice)
    log = alice.get_by_role("log")
    cue = alice.get_by_test_id("new-messages")
    async with aiohttp.ClientSession(base_url=server.url) as session:
        carol = await session.ws_connect("/ws", params={"name": "carol", "uid": "carol-uid-1"})
        await recv_type(carol, "welcome")
        await join(carol, "lobby")

        async def carol_says(first: int, count: int) -> None:
            for i in range(first, first + count):
                await carol.send_json({"type": "chat", "room": "lobby", "text": f"line {i}"})
            await expect(delivered(alice, f"line {first + count - 1}")).to_have_count(1)

        # at the bottom the log follows: no cue
        await carol_says(0, 40)
        await expect(delivered(alice, "line 39")).to_be_in_viewport()
        await expect(cue).to_be_hidden()

        # scrolled up, it stays put and counts
        await log.evaluate("e => { e.scrollTop = 0; }")
        await expect(delivered(alice, "line 0")).to_be_in_viewport()
        await carol_says(40, 15)
        await expect(cue).to_be_visible()
        await expect(cue).to_have_text("15 new messages ↓")
        await expect(delivered(alice, "line 0")).to_be_in_viewport()
        await expect(delivered(alice, "line 54")).not_to_be_in_viewport()
        OUTPUT.mkdir(exist_ok=True)
        await alice.screenshot(path=OUTPUT / "chat-new-messages.png")

        # the cue jumps to the latest and goes
        await cue.click()
        await expect(delivered(alice, "line 54")).to_be_in_viewport()
        await expect(cue).to_be_hidden()

        # back at the bottom, new lines are followed again
        await carol_says(55, 1)
        await expect(delivered(alice, "line 55")).to_be_in_viewport()
        await expect(cue).to_be_hidden()

        # scrolling down by hand clears it too
        await log.evaluate("e => { e.scrollTop = 0; }")
        await carol_says(56, 1)
        await expect(cue).to_have_text("1 new message ↓")
        await log.evaluate("e => { e.scrollTop = e.scrollHeight; }")
        await expect(cue).to_be_hidden()
        await carol.close()


# --- 5. identity: renames, shared names -------------------------------------------------------


async def test_a_rename_is_the_same_person(tabs: ChatTabs) -> None:
    alice = await tabs.open("alice")
    bob = await tabs.open("bob")
    await ready(alice)
    await ready(bob)
    uid = await page_uid(alice)
    await say(alice, "before the rename")

    name = alice.get_by_test_id("name")
    await name.fill("Alice R.")
    await name.press("Enter")
    await ready(alice)
    await expect(alice.get_by_test_id("identity").locator("strong")).to_have_text("Alice R.")

    rename = bob.locator('[data-testid="system"][data-kind="rename"]')
    await expect(rename).to_have_count(1)
    await expect(rename).to_have_text("alice is now Alice R.")
    await expect(rename).to_have_attribute("data-user-id", uid)
    # the reconnect of the rename is not told as a leave and a join
    await expect(bob.locator(f'[data-kind^="presence"][data-user-id="{uid}"]')).to_have_count(0)
    await expect(members(bob)).to_have_count(2)
    assert sorted(await member_ids(bob)) == sorted([uid, await page_uid(bob)])
    await expect(members(bob).filter(has_text="Alice R.")).to_have_attribute("data-user-id", uid)
    await expect(alice.locator('[data-kind="rename-self"]')).to_have_text("You are now Alice R.")

    await say(alice, "after the rename")
    line = chats(bob, "after the rename")
    await expect(line.locator(".msg-name")).to_have_text("Alice R.")
    await expect(line).to_have_attribute("data-user-id", uid)
    await expect(rename).to_have_count(1)  # known already: not told twice


async def test_two_tabs_of_one_browser_are_one_member(tabs: ChatTabs) -> None:
    """The id lives in the browser's storage: a second tab is the same user, under any name."""
    alice = await tabs.open("alice")
    bob = await tabs.open("bob")
    await ready(alice)
    await ready(bob)
    second = await alice.context.new_page()
    await second.goto(alice.url.replace("name=alice", "name=alice2"))
    await ready(second)
    uid = await page_uid(alice)
    assert await page_uid(second) == uid
    await say(second, "from the second tab")
    await expect(chats(bob, "from the second tab")).to_have_attribute("data-user-id", uid)
    await expect(members(bob)).to_have_count(2)
    assert sorted(await member_ids(bob)) == sorted([uid, await page_uid(bob)])


async def test_two_people_with_one_name_stay_two(tabs: ChatTabs) -> None:
    first = await tabs.open("Carol")
    second = await tabs.open("Carol")
    await ready(first)
    await ready(second)
    ids = [await page_uid(first), await page_uid(second)]
    assert ids[0] != ids[1]
    await say(first, "from the first Carol")
    await say(second, "from the second Carol")

    for page in (first, second):
        await expect(members(page)).to_have_count(2)
        assert sorted(await member_ids(page)) == sorted(ids)
        names = members(page).locator(".member-name")
        await expect(names).to_have_text(["Carol", "Carol"])
        tags = await members(page).locator(".name-tag").all_text_contents()
        assert all(re.fullmatch(r" \(#[0-9a-f]{3,8}\)", t) for t in tags), tags
        assert tags[0] != tags[1], tags
        for who, text in ((ids[0], "from the first Carol"), (ids[1], "from the second Carol")):
            line = chats(page, text)
            await expect(line).to_have_attribute("data-user-id", who)
            member_tag = members(page).and_(page.locator(f'[data-user-id="{who}"]'))
            await expect(line.locator(".name-tag")).to_have_text(
                await member_tag.locator(".name-tag").text_content() or "?"
            )


# --- 7. phones, screenshots -------------------------------------------------------------------


@pytest.mark.slow
async def test_screens_with_scripts_and_a_notice(server: LiveServer, tabs: ChatTabs) -> None:
    OUTPUT.mkdir(exist_ok=True)
    desktop = await tabs.open("alice")
    phone = await tabs.open("سارة", viewport=PHONE, phone=True)
    await ready(desktop)
    await ready(phone)

    # the message box has the focus from the start; the header is one compact row
    await expect(box(phone)).to_be_focused()
    await expect(box(desktop)).to_be_focused()
    header = await phone.locator("header").bounding_box()
    assert header and header["height"] <= 56, header
    await expect(phone.get_by_test_id("name")).to_be_hidden()
    await expect(phone.get_by_test_id("room")).to_be_hidden()
    await expect(desktop.get_by_test_id("name")).to_be_visible()
    await expect(desktop.get_by_test_id("menu")).to_be_hidden()

    await say(desktop, "Hello! Testing scripts on every screen.")
    await say(phone, ARABIC)
    await say(desktop, HEBREW)
    await notice(server, "lobby", "Maintenance tonight at 22:00 UTC: expect a short restart.")
    await say(phone, MIXED)
    await say(desktop, CJK)
    await say(phone, EMOJI)
    for page in (desktop, phone):
        await expect(chats(page)).to_have_count(6)
        await expect(page.get_by_test_id("operator-notice")).to_have_count(1)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= (page.viewport_size or {"width": 0})["width"], width
    await expect(box(phone)).to_be_in_viewport()
    await desktop.screenshot(path=OUTPUT / "chat-desktop.png")
    await phone.screenshot(path=OUTPUT / "chat-phone.png")

    # the menu unfolds name and room, Escape folds them again
    menu = phone.get_by_role("button", name="Name and room")
    await expect(menu).to_have_attribute("aria-expanded", "false")
    await menu.click()
    await expect(menu).to_have_attribute("aria-expanded", "true")
    await expect(phone.get_by_test_id("name")).to_be_visible()
    await expect(phone.get_by_test_id("name")).to_be_focused()
    await phone.screenshot(path=OUTPUT / "chat-phone-menu.png")
    await phone.keyboard.press("Escape")
    await expect(phone.get_by_test_id("name")).to_be_hidden()
    await expect(menu).to_be_focused()

    # offline: the one header row still fits, with the countdown and "Retry now"
    server.gate.close()
    server.hub.drop(await server.connection("سارة"), 1001, "test restart")
    await expect(phone.get_by_test_id("status")).to_contain_text("Offline")
    await expect(phone.get_by_test_id("retry")).to_be_visible()
    await box(phone).fill("queued on the phone")
    await box(phone).press("Enter")
    await expect(phone.get_by_test_id("msg-status")).to_have_text(
        "offline: will send when reconnected"
    )
    header = await phone.locator("header").bounding_box()
    assert header and header["height"] <= 56, header
    for hook in ("status", "retry", "menu"):
        bounds = await phone.get_by_test_id(hook).bounding_box()
        assert bounds and bounds["x"] + bounds["width"] <= PHONE["width"], (hook, bounds)
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await phone.screenshot(path=OUTPUT / "chat-phone-offline.png")
    server.gate.open()
    await ready(phone)
    await expect(delivered(phone, "queued on the phone")).to_have_count(1)
