"""The console in a real browser: Playwright driving Debian's Chromium (never a download).

A real server on a free port, the console in one browser context, chat tabs (the real
web client at /) in others, and plain WebSocket clients where a crowd is needed. Screenshots
go to test-output/: console-1280x800.png and console-390x844.png (and their full pages),
console-dark-1280x800.png, console-connection.png, and those of the first test's steps.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from .browser import OUTPUT, LiveServer, serve
from .console import TOKEN

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EVIL_NAME = "<img src=x onerror=alert(1)>"
EVIL_TEXT = '<script>alert("pwned")</script><b>bold?</b>'
ZONE = "Asia/Kolkata"  # UTC+05:30 all year: a local time that is neither UTC nor whole hours
TIME_OF_DAY = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$")


@pytest.fixture
async def server() -> AsyncIterator[LiveServer]:
    async with serve(admin_token=TOKEN, node_id="node-a", host="127.0.0.1") as live:
        yield live


class Dialogs:
    """Every dialog a page opened; confirms get the answers queued (else dismissed)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.answers: list[bool] = []

    async def __call__(self, dialog: Any) -> None:  # a script that ran would show up here
        self.seen.append((dialog.type, dialog.message))
        if dialog.type == "confirm" and self.answers and self.answers.pop(0):
            await dialog.accept()
        else:
            await dialog.dismiss()


async def new_page(
    browser: Browser, dialogs: Dialogs, width: int = 1440, height: int = 1000, **options: Any
) -> Page:
    context = await browser.new_context(
        viewport={"width": width, "height": height}, timezone_id=ZONE, **options
    )
    page = await context.new_page()
    page.on("dialog", dialogs)
    return page


def watch_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: errors.append(f"{msg.text} {msg.location}") if msg.type == "error" else None,
    )
    return errors


async def log_in(page: Page, url: str) -> None:
    await page.goto(f"{url}/admin/login")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{url}/admin/")
    await expect(page.get_by_test_id("live")).to_have_attribute("data-state", "live")


async def shot(page: Page, name: str, full_page: bool = True) -> None:
    OUTPUT.mkdir(exist_ok=True)
    await page.screenshot(path=str(OUTPUT / name), full_page=full_page)


def local_time(iso: str, today: datetime) -> str:
    """What the console shows for the instant `iso` (UTC) in ZONE: HH:MM:SS.mmm, with the
    date in front when that is not `today`'s."""
    when = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZoneInfo(ZONE))
    clock = when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"
    return clock if when.date() == today.date() else f"{when:%Y-%m-%d} {clock}"


async def test_console_in_a_real_browser(server: LiveServer, browser: Browser) -> None:
    expect.set_options(timeout=10_000)
    url = server.url
    dialogs = Dialogs()
    console = await new_page(browser, dialogs)
    errors = watch_errors(console)

    # not logged in: the console sends us to the login page
    await console.goto(f"{url}/admin")
    await expect(console).to_have_url(f"{url}/admin/login")
    await console.fill("#token", "wrong")
    await console.click("button[type=submit]")
    await expect(console.get_by_test_id("login-error")).to_contain_text("not right")
    await console.fill("#token", TOKEN)
    await shot(console, "console-login.png")
    await console.click("button[type=submit]")
    await expect(console).to_have_url(f"{url}/admin/")
    errors.clear()  # the wrong token's 401 is logged by the browser; nothing else may be
    await expect(console.get_by_test_id("live")).to_have_attribute("data-state", "live")
    nodes = console.get_by_test_id("nodes")
    await expect(nodes.locator("tbody tr")).to_have_count(1)
    await expect(nodes.locator("tbody tr th")).to_have_text("node-a")

    # a chat tab opens: its connection appears, live
    rows = console.get_by_test_id("connections").locator("tbody tr")
    await expect(rows).to_have_count(0)
    alice = await new_page(browser, dialogs)
    await alice.goto(f"{url}/?name=alice#lobby")
    alice_row = rows.filter(has_text="alice")
    await expect(alice_row).to_have_count(1)
    await expect(alice_row.locator("td[data-label=Rooms]")).to_have_text("lobby")
    alice_client = await server.connection("alice")

    # a chat tab whose name and text look like HTML
    evil = await new_page(browser, dialogs)
    await evil.goto(f"{url}/?name={quote(EVIL_NAME)}#lobby")
    evil_row = rows.filter(has_text=EVIL_NAME)
    await expect(evil_row).to_have_count(1)
    await expect(evil_row.locator("td[data-label=Name]")).to_have_text(EVIL_NAME)
    await evil.get_by_test_id("message-input").fill(EVIL_TEXT)
    await evil.get_by_test_id("send").click()

    # alice speaks: one compact line, in local time (epoch and date on hover), room, user
    # and text as text (no escaped JSON)
    await alice.get_by_test_id("message-input").fill('hello "from" the browser')
    await alice.get_by_test_id("send").click()
    lines = console.get_by_test_id("lines").locator("li")
    alice_line = lines.filter(has_text="the browser")  # the raw line escapes the quotes
    await expect(alice_line).to_have_count(1)
    await expect(alice_line).to_have_attribute("data-kind", "PUBLISH")
    await expect(alice_line.locator(".ev-room")).to_have_text("#lobby")
    await expect(alice_line.locator(".ev-user")).to_have_text("alice")
    await expect(alice_line.locator(".ev-text")).to_have_text('hello "from" the browser')
    assert "\\" not in await alice_line.inner_text()  # nothing escaped
    assert '"type"' not in await alice_line.inner_text()  # no JSON
    stamp = alice_line.locator("time")
    await expect(stamp).to_have_text(TIME_OF_DAY)
    iso = await stamp.get_attribute("datetime")
    assert iso is not None
    assert await stamp.text_content() == local_time(iso, datetime.now(ZoneInfo(ZONE)))
    await expect(stamp).to_have_attribute("title", re.compile(r"UTC\+05:30 · epoch \d{10}\.\d{6}$"))
    height = await alice_line.evaluate("li => li.getBoundingClientRect().height")
    assert height < 26, height  # one line, not two
    evil_line = lines.filter(has_text="pwned")
    await expect(evil_line).to_have_count(1)
    await expect(evil_line).to_contain_text("<script>alert(")
    await expect(evil_line).to_contain_text("</script><b>bold?</b>")
    rooms = console.get_by_test_id("rooms").locator("tbody tr")
    await expect(rooms.filter(has_text="lobby").locator("td").first).to_have_text("2")

    # the raw MONITOR line on demand, and back
    await console.get_by_test_id("raw").check()
    await expect(alice_line).to_contain_text('"PUBLISH" "gochat:room:lobby"')
    await expect(console).to_have_url(re.compile(r"[?&]raw=1"))
    await console.get_by_test_id("raw").uncheck()
    await expect(alice_line.locator(".ev-text")).to_have_text('hello "from" the browser')
    await shot(console, "console-live.png")

    # connected three days ago: "Since" carries the date (the day is not today's)
    alice_client.connected_at = time.time() - 3 * 86400
    since = alice_row.locator("td[data-label=Since] time")
    await expect(since).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"))

    # filter the stream: only alice, only PUBLISH (and the filter goes into the address)
    stream_filter = console.get_by_test_id("stream-filter")
    await stream_filter.locator("input[name=user]").fill(alice_client.user_id)
    for kind in await stream_filter.locator("input[name=kind]").all():
        if await kind.get_attribute("value") != "PUBLISH":
            await kind.uncheck()
    visible = console.locator("[data-testid=lines] li:visible")
    await expect(visible).to_have_count(1)
    await expect(visible).to_contain_text('hello "from" the browser')
    await expect(evil_line).to_be_hidden()
    await expect(console).to_have_url(re.compile(r"ev_kinds=PUBLISH"))
    # the server applies it too: new lines from others do not arrive
    await evil.get_by_test_id("message-input").fill("not for alice's filter")
    await evil.get_by_test_id("send").click()
    await alice.get_by_test_id("message-input").fill("second from alice")
    await alice.get_by_test_id("send").click()
    await expect(visible).to_have_count(2)
    await expect(lines.filter(has_text="not for alice")).to_have_count(0)
    await shot(console, "console-filtered.png")

    # pause holds new lines back; resume shows them
    await console.get_by_test_id("pause").click()
    await expect(console.get_by_test_id("live")).to_have_attribute("data-state", "paused")
    await alice.get_by_test_id("message-input").fill("said while paused")
    await alice.get_by_test_id("send").click()
    await expect(console.get_by_test_id("stream-stats")).to_contain_text("1 new while paused")
    await expect(lines.filter(has_text="said while paused")).to_have_count(0)
    await console.get_by_test_id("pause").click()
    await expect(lines.filter(has_text="said while paused")).to_have_count(1)

    # clear the filter again
    await stream_filter.locator("input[name=user]").fill("")
    for kind in await stream_filter.locator("input[name=kind]").all():
        await kind.check()
    await expect(evil_line).to_be_visible()  # the filter is off again

    # a notice from the lobby's row: prefilled, and it says how many it reached
    result = console.get_by_test_id("action-result")
    notice_form = console.get_by_test_id("notice-form")
    await rooms.filter(has_text="lobby").get_by_role("button", name="Notice…").click()
    await expect(notice_form.locator("input[name=room]")).to_have_value("lobby")
    await expect(notice_form.locator("input[name=text]")).to_be_focused()
    await notice_form.locator("input[name=text]").fill("Server restarts at 10:00")
    await notice_form.get_by_role("button", name="Send").click()
    await expect(result).to_have_text("Notice sent to #lobby: reached 2 members")
    await expect(evil.get_by_test_id("messages")).to_contain_text("Server restarts at 10:00")
    notice_line = lines.filter(has=console.locator(".ev-kind", has_text="NOTICE"))
    await expect(notice_line).to_have_count(1)
    await expect(notice_line).to_contain_text("#lobby system Server restarts at 10:00 by 127.0.0.1")
    assert dialogs.seen == []  # no question for a room with members

    # a notice to a room nobody is in: asked first; "cancel" sends nothing, "OK" sends it
    await notice_form.locator("input[name=room]").fill("empty-room")
    await notice_form.locator("input[name=text]").fill("anyone here?")
    await notice_form.get_by_role("button", name="Send").click()
    await expect(result).to_have_text("Notice not sent: #empty-room has no members")
    assert dialogs.seen == [("confirm", dialogs.seen[0][1])]
    assert "Nobody is in #empty-room" in dialogs.seen[0][1]
    dialogs.answers.append(True)
    await notice_form.get_by_role("button", name="Send").click()
    await expect(result).to_have_text("Notice sent to #empty-room: reached 0 members")
    assert len(dialogs.seen) == 2
    await expect(lines.filter(has_text="anyone here?")).to_have_count(1)

    # alice's connection in detail: rooms, address, user agent, send buffer, since
    await alice_row.locator("a.conn-link").click()
    await expect(console).to_have_url(f"{url}/admin/connections/{alice_client.id}")
    detail = console.get_by_test_id("detail")
    await expect(detail.get_by_test_id("detail-rooms")).to_contain_text("lobby")
    await expect(detail.get_by_test_id("detail-rooms")).to_contain_text("2 members")
    await expect(detail.get_by_test_id("detail-remote")).to_have_text(alice_client.remote)
    agent = await alice.evaluate("navigator.userAgent")
    await expect(detail.get_by_test_id("detail-agent")).to_have_text(agent)
    await expect(detail.get_by_test_id("detail-fill")).to_contain_text(re.compile(r"\d+% \("))
    await expect(detail.get_by_test_id("detail-fill").locator("meter")).to_have_count(1)
    await expect(detail.get_by_test_id("detail-since")).to_contain_text(
        re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(for 3d 0h\)")
    )
    await shot(console, "console-connection.png")
    await console.get_by_test_id("back").click()
    await expect(console.get_by_test_id("live")).to_have_attribute("data-state", "live")

    # kick alice: her tab shows it, her row goes, the stream audits it
    await alice_row.get_by_role("button", name="Kick…").click()
    kick_form = console.get_by_test_id("kick-form")
    await expect(kick_form.locator("input[name=conn]")).to_have_value(alice_client.id)
    await kick_form.locator("input[name=reason]").fill("flooding the lobby")
    await kick_form.get_by_role("button", name="Kick").click()
    await expect(result).to_have_text(f"Kicked {alice_client.id}")
    await expect(alice.get_by_test_id("notice-text")).to_contain_text(
        "disconnected by an operator: flooding the lobby"
    )
    await expect(alice_row).to_have_count(0)
    kick_line = lines.filter(has=console.locator(".ev-kind", has_text="KICK"))
    await expect(kick_line).to_have_count(1)
    await expect(kick_line).to_contain_text(f"{alice_client.id} ")
    await expect(kick_line).to_contain_text("flooding the lobby by 127.0.0.1")
    disconnect = lines.filter(has=console.locator(".ev-kind", has_text="DISCONNECT"))
    await expect(disconnect.filter(has_text="4001 kicked")).to_have_count(1)
    await shot(alice, "chat-kicked.png")
    await shot(console, "console-after-kick.png")

    # the other tab closes: its row disappears
    await evil.context.close()
    await expect(evil_row).to_have_count(0)
    await expect(rows).to_have_count(0)

    # nothing that looked like HTML became HTML; the only dialogs were the two questions
    assert [kind for kind, _ in dialogs.seen] == ["confirm", "confirm"]
    assert await console.locator("table img, .lines script, .lines b, td script").count() == 0
    assert errors == [], errors

    # log out: back to the login page, and the console is closed to this browser
    await console.get_by_role("button", name="Log out").click()
    await expect(console).to_have_url(f"{url}/admin/login")
    await console.goto(f"{url}/admin/")
    await expect(console).to_have_url(f"{url}/admin/login")


# --- a crowd: sorting, the charts, a phone -------------------------------------------------

CROWD = 60  # connections, enough for rows that overflowed a phone before
ROOMS = 40  # rooms with long names, besides the busiest
BUSIEST = "zz-the-busiest-room"  # last by name: only a sort by members brings it up


async def crowd(stack: AsyncExitStack, url: str) -> list[aiohttp.ClientWebSocketResponse]:
    """CROWD plain WebSocket clients with long names, spread over ROOMS rooms; the first 12
    are also in BUSIEST."""
    session = await stack.enter_async_context(aiohttp.ClientSession())
    sockets = []
    for i in range(CROWD):
        ws = await session.ws_connect(
            url.replace("http", "ws", 1) + "/ws",
            params={"name": f"a-rather-long-display-name-{i:02d}"},
            headers={"User-Agent": f"crowd-client/{i}"},
        )
        stack.push_async_callback(ws.close)
        rooms = [f"room-with-a-rather-long-name-{(i + k) % ROOMS:02d}" for k in range(3)]
        if i < 12:
            rooms.append(BUSIEST)
        for room in rooms:
            await ws.send_json({"type": "join", "room": room})
        sockets.append(ws)
    return sockets


async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Read and forget everything a crowd client is sent (so nobody becomes slow)."""
    async for _ in ws:
        pass


POSITIVE = re.compile(r"^(0\.\d*[1-9]\d*|[1-9][\d.]*)$")  # a number above 0
DRAWN = re.compile(r"^M\d")  # an SVG path that draws something


async def test_console_sorts_charts_and_fits_a_phone(server: LiveServer, browser: Browser) -> None:
    expect.set_options(timeout=10_000)
    url = server.url
    dialogs = Dialogs()
    async with AsyncExitStack() as stack:
        sockets = await crowd(stack, url)
        readers = [asyncio.ensure_future(drain(ws)) for ws in sockets]
        stack.callback(lambda: [r.cancel() for r in readers])
        room_count = ROOMS + 1
        await until_hub(server, lambda: len(server.hub.rooms) == room_count)

        console = await new_page(browser, dialogs, width=1280, height=800)
        errors = watch_errors(console)
        await log_in(console, url)
        rooms = console.get_by_test_id("rooms")
        await expect(rooms.locator("tbody tr")).to_have_count(room_count)
        await expect(rooms.locator("tbody tr").first.locator("th")).not_to_have_text(BUSIEST)
        await expect(rooms.locator("tbody tr").last.locator("th")).to_have_text(BUSIEST)

        # sort by members: the busiest room comes first, and the sort is in the address
        members = rooms.locator("th[data-sort=members]")
        await members.get_by_role("link").click()
        await expect(members).to_have_attribute("aria-sort", "descending")
        await expect(rooms.locator("tbody tr").first.locator("th")).to_have_text(BUSIEST)
        await expect(rooms.locator("tbody tr").first.locator("td").first).to_have_text("12")
        await expect(console).to_have_url(re.compile(r"[?&]room_sort=-members(&|$)"))
        # ... and survives a reload from the address
        await console.reload()
        await expect(console.get_by_test_id("live")).to_have_attribute("data-state", "live")
        await expect(members).to_have_attribute("aria-sort", "descending")
        await expect(rooms.locator("tbody tr").first.locator("th")).to_have_text(BUSIEST)
        # the connections' page is in the address too
        await console.locator("[data-pager=connections] [data-step='1']").click()
        await expect(console).to_have_url(re.compile(r"[?&]page=1(&|$)"))
        await expect(console.get_by_test_id("connections").locator("tbody tr")).to_have_count(
            CROWD - 50
        )
        await console.reload()
        await expect(console.locator("[data-pager=connections] [data-count]")).to_have_text(
            f"51–{CROWD} of {CROWD}"
        )

        # the charts move while traffic runs
        messages = console.get_by_test_id("chart-messages")
        line = messages.locator(".chart-line")
        await expect(
            console.get_by_test_id("chart-connections").locator("[data-value]")
        ).to_have_text(str(CROWD))
        before = await line.get_attribute("d")
        talking = asyncio.ensure_future(talk(sockets[:12], BUSIEST))
        try:
            value = messages.locator("[data-value]")
            await expect(value).to_have_attribute("data-raw", POSITIVE)
            await expect(line).not_to_have_attribute("d", before or "")
            deliveries = console.get_by_test_id("chart-deliveries").locator("[data-value]")
            await expect(deliveries).to_have_attribute("data-raw", POSITIVE)
            await console.evaluate("window.scrollTo(0, 0)")  # the reload kept the pager's place
            await shot(console, "console-1280x800.png", full_page=False)
            await shot(console, "console-1280x800-full.png")
            dark = await new_page(browser, dialogs, width=1280, height=800, color_scheme="dark")
            await log_in(dark, url)
            await expect(dark.locator(".chart-line").first).to_have_attribute("d", DRAWN)
            await shot(dark, "console-dark-1280x800.png", full_page=False)
        finally:
            talking.cancel()
        assert await console.evaluate("document.scrollingElement.scrollWidth") <= 1280

        # a phone: nothing scrolls sideways, the tables are cards
        phone = await new_page(browser, dialogs, width=390, height=844)
        phone_errors = watch_errors(phone)
        await log_in(phone, url)
        await expect(phone.get_by_test_id("connections").locator("tbody tr")).to_have_count(50)
        await expect(phone.get_by_test_id("rooms").locator("tbody tr")).to_have_count(room_count)
        await expect(phone.locator(".chart-line").first).to_have_attribute("d", DRAWN)
        width = await phone.evaluate("document.scrollingElement.scrollWidth")
        assert width <= 390, width
        wide = await phone.evaluate(
            """() => [...document.querySelectorAll('body *')]
                .filter((e) => e.getBoundingClientRect().right > 390.5)
                .map((e) => e.tagName + '.' + e.className)"""
        )
        assert wide == [], wide
        card = phone.get_by_test_id("connections").locator("tbody tr").first
        assert await card.evaluate("tr => getComputedStyle(tr).display") == "grid"
        await shot(phone, "console-390x844.png", full_page=False)
        await shot(phone, "console-390x844-full.png")
        assert errors == [] and phone_errors == [], (errors, phone_errors)
    assert dialogs.seen == []


async def until_hub(server: LiveServer, condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.02)


async def talk(sockets: list[aiohttp.ClientWebSocketResponse], room: str) -> None:
    """Traffic until cancelled: each socket says something in `room` every 100 ms."""
    n = 0
    while True:
        sends: list[Awaitable[None]] = [
            ws.send_json({"type": "chat", "room": room, "text": f"busy {n}"}) for ws in sockets
        ]
        await asyncio.gather(*sends)
        n += 1
        await asyncio.sleep(0.1)


async def test_reload_keeps_the_stream_filter(server: LiveServer, browser: Browser) -> None:
    """Filters of the stream live in the address like the tables' (ev_* parameters)."""
    expect.set_options(timeout=10_000)
    dialogs = Dialogs()
    page = await new_page(browser, dialogs, width=1280, height=800)
    await log_in(page, server.url)
    await page.get_by_test_id("stream-filter").locator("input[name=room]").fill("lobby")
    await expect(page).to_have_url(re.compile(r"[?&]ev_room=lobby"))
    await page.reload()
    await expect(page.get_by_test_id("stream-filter").locator("input[name=room]")).to_have_value(
        "lobby"
    )
    context: BrowserContext = page.context
    await context.close()
