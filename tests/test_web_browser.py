"""The web pages in Debian's Chromium: log in, manage a rule, follow a real push from webhook to its pages."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import expect

from opp_ci_app import catalog
from opp_ci_app.models import Role
from tests.conftest import WEBHOOK_SECRET
from tests.plugins.browser import CHROMIUM, DESKTOP, FAILURE_SCREENSHOT, PHONE

pytestmark = pytest.mark.browser

PUSH_PAYLOAD = Path("/work/shared/conformance/webhooks/push.branch-created.4.json")
PUSH_SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
XSS = "<script>alert(1)</script>"
REPO = Path(__file__).resolve().parent.parent
PAGES = ("/", "/runs", "/rules", "/rules/1", "/deliveries", "/login", "/matrix-runs/1", "/runs/1", "/nowhere")


async def seed(db):
    async with db.begin() as session:
        await catalog.create_project(session, "hello", "Codertocat", "Hello-World")
        await catalog.create_matrix(
            session, "hello", "hello-full", {"axes": {"kind": ["smoke", "fingerprint"], "mode": ["release", "debug"]}}
        )


def push_body() -> bytes:
    if PUSH_PAYLOAD.is_file():
        return PUSH_PAYLOAD.read_bytes()
    return json.dumps({
        "ref": "refs/heads/master", "before": "0" * 40, "after": PUSH_SHA, "created": True, "deleted": False,
        "repository": {"name": "Hello-World", "full_name": "Codertocat/Hello-World",
                       "owner": {"login": "Codertocat", "name": "Codertocat"}},
        "head_commit": {"id": PUSH_SHA, "message": "Initial commit", "timestamp": "2019-05-15T15:19:25Z"},
    }).encode()


async def deliver_push(base_url: str) -> dict:
    """Send GitHub's push payload, signed, to the running app's webhook."""
    body = push_body()
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push",
               "X-GitHub-Delivery": "3f0e7c40-0000-11ef-9a1b-browsertest", "X-Hub-Signature-256": signature}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base_url}/api/github/webhook", data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def log_in(page, base_url, token):
    await page.goto(f"{base_url}/rules")
    await page.get_by_role("link", name="Log in", exact=True).click()
    await page.get_by_label("Admin token").fill(token)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{base_url}/rules")
    await expect(page.get_by_role("status")).to_contain_text("Logged in with admin token alice")


async def test_rule_lifecycle(page, live_server, db, make_token):
    await seed(db)
    await log_in(page, live_server, await make_token(Role.ADMIN, "alice"))
    await expect(page.get_by_text("No rules yet")).to_be_visible()

    form = page.locator("form[action='/rules']")
    await form.get_by_label("Project").select_option("hello")
    await form.get_by_label("Type").select_option("branch")
    await form.get_by_label("Pattern").fill("release/*")
    await form.get_by_label("Matrix").select_option("hello-full")
    await form.get_by_role("button", name="Create rule").click()
    await expect(page.get_by_role("status")).to_contain_text("Rule 1 created: branch 'release/*' in hello")
    row = page.locator("table.list tbody tr").filter(has_text="release/*")
    await expect(row).to_contain_text("hello-full")
    await expect(row).to_contain_text("enabled")

    await row.get_by_role("link", name="#1").click()
    await expect(page).to_have_url(f"{live_server}/rules/1")
    await expect(page.locator("dl.facts")).to_contain_text("fingerprint/debug")
    await page.get_by_role("button", name="Disable").click()
    await expect(page.get_by_role("status")).to_contain_text("Rule 1 disabled.")
    await expect(page.locator("h1 .badge")).to_have_text("disabled")
    await page.get_by_role("button", name="Enable").click()
    await expect(page.locator("h1 .badge")).to_have_text("enabled")
    await page.get_by_role("button", name="Delete rule").click()
    await expect(page).to_have_url(f"{live_server}/rules")
    await expect(page.get_by_role("status")).to_contain_text("Rule 1 deleted.")
    await expect(page.get_by_text("No rules yet")).to_be_visible()
    async with db() as session:
        assert await catalog.list_rules(session) == []


async def test_bad_rule_input_is_shown_and_nothing_saved(page, live_server, db, make_token):
    await seed(db)
    await log_in(page, live_server, await make_token(Role.ADMIN, "alice"))
    form = page.locator("form[action='/rules']")
    await form.get_by_label("Pattern").fill("   ")
    await form.get_by_role("button", name="Create rule").click()
    await expect(page.get_by_role("alert")).to_have_text("Nothing was saved: pattern must be a non-empty string")
    async with db() as session:
        assert await catalog.list_rules(session) == []


async def test_queued_push_on_runs_and_matrix_run_pages(page, live_server, db):
    await seed(db)
    async with db.begin() as session:
        await catalog.create_rule(session, "hello", "branch", "master", "hello-full")
    summary = await deliver_push(live_server)
    assert summary["runs_queued"] == 4, summary
    matrix_run_id = summary["matrix_runs"][0]

    await page.goto(f"{live_server}/runs")
    rows = page.locator("table.list tbody tr")
    await expect(rows).to_have_count(4)
    await expect(rows.first).to_contain_text("queued")
    await expect(rows.first).to_contain_text("master")
    await page.get_by_label("Status").select_option("running")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.get_by_text("No runs match these filters")).to_be_visible()
    await page.get_by_role("link", name="Show all runs").click()

    await page.get_by_role("link", name=f"#{matrix_run_id}").first.click()
    await expect(page).to_have_url(f"{live_server}/matrix-runs/{matrix_run_id}")
    await expect(page.locator("h1")).to_contain_text("hello-full")
    await expect(page.locator("h1 .badge")).to_have_text("pending")
    await expect(page.locator(".lead")).to_have_text("0/4 done")
    for label in ("smoke/release", "smoke/debug", "fingerprint/release", "fingerprint/debug"):
        await expect(page.get_by_role("link", name=label)).to_be_visible()
    commit = page.get_by_role("link", name=PUSH_SHA)
    assert await commit.get_attribute("href") == f"https://github.com/Codertocat/Hello-World/commit/{PUSH_SHA}"
    # No GitHub credentials in tests: the pending status waits, and every page says so.
    banner = page.get_by_role("region", name="GitHub connection")
    await expect(banner).to_contain_text("GitHub is not connected: 1 GitHub call is waiting")
    await expect(page.locator("table.calls tbody tr").first).to_contain_text("waits for GitHub credentials")
    await banner.get_by_role("link", name="/github/setup").click()
    await expect(page).to_have_url(f"{live_server}/login?next=/github/setup")  # registering needs an admin

    await page.goto(f"{live_server}/deliveries")
    delivery = page.locator("table.list tbody tr").first
    await expect(delivery).to_contain_text("3f0e7c40-0000-11ef-9a1b-browsertest")
    await expect(delivery).to_contain_text("queued 4 runs")
    await delivery.get_by_role("link", name=f"#{matrix_run_id}").click()
    await expect(page).to_have_url(f"{live_server}/matrix-runs/{matrix_run_id}")


async def test_script_pattern_is_text(page, live_server, db, make_token):
    await seed(db)
    await log_in(page, live_server, await make_token(Role.ADMIN, "alice"))
    form = page.locator("form[action='/rules']")
    await form.get_by_label("Pattern").fill(XSS)
    await form.get_by_role("button", name="Create rule").click()
    await expect(page.locator("code.pattern")).to_have_text(XSS)
    await page.goto(f"{live_server}/rules/1")
    await expect(page.locator("code.pattern")).to_have_text(XSS)
    assert page.dialogs == []
    assert await page.evaluate("document.querySelectorAll('main script').length") == 0


async def test_logout(page, live_server, make_token):
    await log_in(page, live_server, await make_token(Role.ADMIN, "alice"))
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("status")).to_have_text("Logged out.")
    await expect(page.get_by_role("link", name="Log in", exact=True)).to_be_visible()
    await page.goto(f"{live_server}/rules")
    await expect(page.locator("form[action='/rules']")).to_have_count(0)


@pytest.mark.parametrize("page", [DESKTOP, PHONE], indirect=True, ids=["desktop", "phone"])
async def test_pages_fit_the_screen(page, live_server, db, make_token, tmp_path):
    """Every page renders without a horizontal scrollbar on desktop and phone (screenshots under tmp_path)."""
    viewport = "phone" if page.viewport_size == PHONE else "desktop"
    await seed(db)
    async with db.begin() as session:
        await catalog.create_rule(session, "hello", "branch", "master", "hello-full")
        await catalog.create_rule(session, "hello", "pr", "*")
    await deliver_push(live_server)
    await log_in(page, live_server, await make_token(Role.ADMIN, "alice"))
    for path in PAGES:
        response = await page.goto(f"{live_server}{path}")
        assert response.status == (404 if path == "/nowhere" else 200), path
        name = re.sub(r"\W+", "_", path).strip("_") or "home"
        await page.screenshot(path=str(tmp_path / f"{viewport}-{name}.png"), full_page=True)
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than the screen"


FAILING_BROWSER_TEST = '''
import pytest

pytestmark = pytest.mark.browser


async def test_fails(page):
    await page.set_content("<h1>boom</h1>")
    assert False, "on purpose"


async def test_passes(page):
    await page.set_content("<h1>fine</h1>")
'''


def test_failed_browser_test_leaves_a_screenshot(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing")
    (tmp_path / "test_inner.py").write_text(FAILING_BROWSER_TEST)
    basetemp = tmp_path / "basetemp"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.plugins.browser", "-p", "no:cacheprovider",
         "-o", "asyncio_mode=auto", f"--basetemp={basetemp}", "test_inner.py"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout
    shot = basetemp / "test_fails0" / FAILURE_SCREENSHOT
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert f"screenshot of the failed browser test: {shot}" in result.stdout
    assert not (basetemp / "test_passes0" / FAILURE_SCREENSHOT).exists()
