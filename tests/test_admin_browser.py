"""The console in a real browser: Playwright driving Debian's Chromium (never a download).

A real server on a free port, the console in one browser context, chat tabs (the real
web client at /) in others. Screenshots go to test-output/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from playwright.async_api import Browser, Page, expect

from .browser import OUTPUT, serve
from .console import TOKEN

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EVIL_NAME = "<img src=x onerror=alert(1)>"
EVIL_TEXT = '<script>alert("pwned")</script><b>bold?</b>'


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async with serve(admin_token=TOKEN, node_id="node-a", host="127.0.0.1") as live:
        yield live.url


async def new_page(browser: Browser, dialogs: list[str]) -> Page:
    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    page = await context.new_page()

    async def on_dialog(dialog: Any) -> None:  # a script that ran would show up here
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    return page


async def shot(page: Page, name: str) -> None:
    OUTPUT.mkdir(exist_ok=True)
    await page.screenshot(path=str(OUTPUT / name), full_page=True)


async def test_console_in_a_real_browser(server: str, browser: Browser) -> None:
    expect.set_options(timeout=10_000)
    dialogs: list[str] = []
    errors: list[str] = []
    console = await new_page(browser, dialogs)
    console.on("pageerror", lambda exc: errors.append(str(exc)))
    console.on(
        "console",
        lambda msg: errors.append(f"{msg.text} {msg.location}") if msg.type == "error" else None,
    )

    # not logged in: the console sends us to the login page
    await console.goto(f"{server}/admin")
    await expect(console).to_have_url(f"{server}/admin/login")
    await console.fill("#token", "wrong")
    await console.click("button[type=submit]")
    await expect(console.get_by_test_id("login-error")).to_contain_text("not right")
    await console.fill("#token", TOKEN)
    await shot(console, "console-login.png")
    await console.click("button[type=submit]")
    await expect(console).to_have_url(f"{server}/admin/")
    errors.clear()  # the wrong token's 401 is logged by the browser; nothing else may be
    await expect(console.get_by_test_id("live")).to_have_attribute("data-state", "live")
    nodes = console.get_by_test_id("nodes")
    await expect(nodes.locator("tbody tr")).to_have_count(1)
    await expect(nodes.locator("tbody tr th")).to_have_text("node-a")

    # a chat tab opens: its connection appears, live
    rows = console.get_by_test_id("connections").locator("tbody tr")
    await expect(rows).to_have_count(0)
    alice = await new_page(browser, dialogs)
    await alice.goto(f"{server}/?name=alice#lobby")
    alice_row = rows.filter(has_text="alice")
    await expect(alice_row).to_have_count(1)
    await expect(alice_row.locator("td").nth(4)).to_have_text("lobby")

    # a chat tab whose name and text look like HTML
    evil = await new_page(browser, dialogs)
    await evil.goto(f"{server}/?name={quote(EVIL_NAME)}#lobby")
    evil_row = rows.filter(has_text=EVIL_NAME)
    await expect(evil_row).to_have_count(1)
    await expect(evil_row.locator("td").nth(2)).to_have_text(EVIL_NAME)
    await evil.get_by_test_id("message-input").fill(EVIL_TEXT)
    await evil.get_by_test_id("send").click()

    # alice speaks: the PUBLISH line shows in the stream
    await alice.get_by_test_id("message-input").fill("hello from the browser")
    await alice.get_by_test_id("send").click()
    lines = console.get_by_test_id("lines").locator("li")
    alice_line = lines.filter(has_text="hello from the browser")
    await expect(alice_line).to_have_count(1)
    await expect(alice_line).to_contain_text('"PUBLISH" "gochat:room:lobby"')
    await expect(alice_line).to_have_attribute("data-kind", "PUBLISH")
    evil_line = lines.filter(has_text="pwned")
    await expect(evil_line).to_have_count(1)
    await expect(evil_line).to_contain_text("<script>alert(")
    await expect(evil_line).to_contain_text("</script><b>bold?</b>")
    rooms = console.get_by_test_id("rooms").locator("tbody tr")
    await expect(rooms.filter(has_text="lobby").locator("td").first).to_have_text("2")
    await shot(console, "console-live.png")

    # filter the stream: only alice, only PUBLISH
    stream_filter = console.get_by_test_id("stream-filter")
    await stream_filter.locator("input[name=user]").fill("alice")
    for kind in await stream_filter.locator("input[name=kind]").all():
        if await kind.get_attribute("value") != "PUBLISH":
            await kind.uncheck()
    visible = console.locator("[data-testid=lines] li:visible")
    await expect(visible).to_have_count(1)
    await expect(visible).to_contain_text("hello from the browser")
    await expect(evil_line).to_be_hidden()
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

    # kick alice: her tab shows it, her row goes, the stream audits it
    await alice_row.get_by_role("button", name="Kick…").click()
    kick_form = console.get_by_test_id("kick-form")
    await expect(kick_form.locator("input[name=conn]")).to_have_value("node-a/1")
    await kick_form.locator("input[name=reason]").fill("flooding the lobby")
    await kick_form.get_by_role("button", name="Kick").click()
    await expect(console.get_by_test_id("action-result")).to_have_text("Kicked node-a/1")
    await expect(alice.get_by_test_id("notice-text")).to_contain_text(
        "disconnected by an operator: flooding the lobby"
    )
    await expect(alice_row).to_have_count(0)
    kick_line = lines.filter(has_text='"KICK"')
    await expect(kick_line).to_have_count(1)
    await expect(kick_line).to_contain_text('"node-a/1" "alice" "flooding the lobby"')
    await expect(lines.filter(has_text='"DISCONNECT" "node-a/1" "4001"')).to_have_count(1)
    await shot(alice, "chat-kicked.png")

    # a notice from the console reaches the remaining tab
    notice_form = console.get_by_test_id("notice-form")
    await notice_form.locator("input[name=room]").fill("lobby")
    await notice_form.locator("input[name=text]").fill("Server restarts at 10:00")
    await notice_form.get_by_role("button", name="Send").click()
    await expect(console.get_by_test_id("action-result")).to_have_text("Notice sent to #lobby")
    await expect(evil.get_by_test_id("messages")).to_contain_text("Server restarts at 10:00")
    await expect(lines.filter(has_text='"NOTICE"')).to_have_count(1)
    await shot(console, "console-after-kick.png")

    # the other tab closes: its row disappears
    await evil.context.close()
    await expect(evil_row).to_have_count(0)
    await expect(rows).to_have_count(0)

    # nothing that looked like HTML became HTML
    assert dialogs == []
    assert await console.locator("table img, .lines script, .lines b, td script").count() == 0
    assert errors == [], errors

    # log out: back to the login page, and the console is closed to this browser
    await console.get_by_role("button", name="Log out").click()
    await expect(console).to_have_url(f"{server}/admin/login")
    await console.goto(f"{server}/admin/")
    await expect(console).to_have_url(f"{server}/admin/login")
