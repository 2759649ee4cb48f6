"""Playwright driving Debian's Chromium against the real app on a loopback port; a screenshot when a test fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from opp_ci_app.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 10_000
FAILURE_SCREENSHOT = "failure.png"


def pytest_configure(config):
    # aiohttp-session stores its keys under plain strings; not ours to change.
    config.addinivalue_line("filterwarnings", "ignore:It is recommended to use web.RequestKey:UserWarning")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
async def browser():
    """Debian's Chromium, headless, through Playwright; skipped when it is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make browser` (part of `make test`) installs Debian's chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()


@pytest.fixture
async def live_server(aiohttp_server, settings, engine):
    """The real app (no background tasks) on a free loopback port; its base URL without a trailing slash."""
    server = await aiohttp_server(create_app(settings, engine=engine, background=False), host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def page(request, browser, tmp_path):
    """A page (desktop-sized; parametrize indirectly with a viewport such as PHONE); `page.dialogs` lists every
    alert/confirm fired (and dismissed); a full-page screenshot goes to tmp_path when the test fails."""
    context = await browser.new_context(viewport=getattr(request, "param", DESKTOP))
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.dialogs = dialogs  # type: ignore[attr-defined]
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        path = tmp_path / FAILURE_SCREENSHOT
        await page.screenshot(path=str(path), full_page=True)
        print(f"screenshot of the failed browser test: {path}", file=sys.stderr)
    await context.close()
