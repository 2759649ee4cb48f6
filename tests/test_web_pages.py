"""Web pages through a real HTTP client: content, filters, pagination, 404s, escaping, CSRF, login."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import stat

import aiohttp
import pytest
from sqlalchemy import event, func, select

from opp_ci_app import catalog, tokens
from opp_ci_app.app import create_app
from opp_ci_app.models import (
    AutoTestRule,
    CallState,
    GitHubCall,
    Role,
    RunStatus,
    TestMatrixRun,
    TestRun,
    WebhookDelivery,
    utcnow,
)
from opp_ci_app.web import filters
from opp_ci_app.web.session import COOKIE_NAME, SESSION_KEY_FILE
from tests.plugins.fake_github import generate_rsa_key

SHA = "0123456789abcdef0123456789abcdef01234567"
XSS = "<script>alert(1)</script>"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


async def seed_catalog(db):
    """Project inet with matrix inet-full (3 cells), project other with matrix other-m, one rule."""
    async with db.begin() as session:
        await catalog.create_project(session, "inet", "inet-framework", "inet")
        await catalog.create_project(session, "other", "acme", "other")
        await catalog.create_matrix(
            session,
            "inet",
            "inet-full",
            {"axes": {"kind": ["smoke", "fingerprint"], "mode": ["release", "debug"]}, "exclude": [{"kind": "smoke", "mode": "debug"}]},
        )
        await catalog.create_matrix(session, "other", "other-m", {"axes": {"kind": ["smoke"]}})
        rule = await catalog.create_rule(session, "inet", "branch", "master", "inet-full")
        return rule.id


async def seed_push(db, rule_id, *, statuses=(RunStatus.QUEUED, RunStatus.QUEUED, RunStatus.QUEUED), pr=None,
                    ref="master", guid="72d3162e-cc78-11e3-81ab-4c9367dc0958", created=None):
    """A matrix run (as the webhook queues it) with one run per status, and its delivery."""
    async with db.begin() as session:
        rule = await session.get(AutoTestRule, rule_id)
        mr = TestMatrixRun(
            project_id=rule.project_id, rule_id=rule.id, matrix_id=rule.matrix_id, matrix_name="inet-full",
            trigger="pull_request" if pr else "push", git_ref=ref, github_owner="inet-framework", github_repo="inet",
            github_commit_sha=SHA, github_pr_number=pr, delivery_guid=guid,
            created_at=created or utcnow(),
        )
        session.add(mr)
        await session.flush()
        labels = ["smoke/release", "fingerprint/release", "fingerprint/debug"]
        for label, status in zip(labels, statuses):
            kind, mode = label.split("/")
            session.add(TestRun(
                matrix_run_id=mr.id, project_id=rule.project_id, cell={"kind": kind, "mode": mode}, label=label,
                status=status, git_ref=ref, github_owner="inet-framework", github_repo="inet",
                github_commit_sha=SHA, github_pr_number=pr, created_at=created or utcnow(),
            ))
        session.add(WebhookDelivery(
            guid=guid, event="pull_request" if pr else "push", action="opened" if pr else None,
            repository="inet-framework/inet", project_id=rule.project_id, runs_queued=len(statuses),
            matrix_run_ids=[mr.id],
        ))
        return mr.id


async def login(client, token):
    """Log in through the form; returns the CSRF token of the logged-in session."""
    page = await (await client.get("/login")).text()
    resp = await client.post("/login", data={"token": token, "csrf_token": CSRF_RE.search(page)[1], "next": "/rules"})
    assert resp.status == 200, await resp.text()
    assert str(resp.url).endswith("/rules")
    text = await resp.text()
    assert "Log out" in text
    return CSRF_RE.search(text)[1]


async def rule_count(db):
    async with db() as session:
        return await session.scalar(select(func.count()).select_from(AutoTestRule))


@pytest.fixture
async def admin_client(client, make_token):
    client.csrf = await login(client, await make_token(Role.ADMIN, "alice"))
    return client


async def test_home_empty_says_what_to_do(client):
    resp = await client.get("/")
    assert resp.status == 200
    text = await resp.text()
    assert '<meta name="viewport"' in text
    assert "No matrix runs yet" in text
    assert "opp_ci project create --name inet --github inet-framework/inet" in text


async def test_home_shows_counts_and_recent_matrix_runs(client, db):
    rule_id = await seed_catalog(db)
    mr_id = await seed_push(db, rule_id, statuses=(RunStatus.PASSED, RunStatus.FAILED, RunStatus.RUNNING))
    text = await (await client.get("/")).text()
    assert f'href="/matrix-runs/{mr_id}"' in text
    assert "2/3 done, 1 failed, 1 running" in text
    assert 'class="badge st-pending"' in text
    assert "<strong>1</strong> of 1 rules enabled" in text
    assert re.search(r'<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">just now</time>', text)


async def test_runs_list_filters_and_links(client, db):
    rule_id = await seed_catalog(db)
    push_id = await seed_push(db, rule_id)
    pr_id = await seed_push(db, rule_id, pr=42, ref="topic/x", guid="g-pr",
                            statuses=(RunStatus.PASSED, RunStatus.PASSED, RunStatus.FAILED))
    text = await (await client.get("/runs")).text()
    assert text.count('href="/runs/') == 6
    assert text.index(f'href="/matrix-runs/{pr_id}"') < text.index(f'href="/matrix-runs/{push_id}"')  # newest first
    assert f"https://github.com/inet-framework/inet/commit/{SHA}" in text
    assert "https://github.com/inet-framework/inet/pull/42" in text

    text = await (await client.get("/runs", params={"pr": "42"})).text()
    assert text.count('href="/runs/') == 3 and f"/matrix-runs/{push_id}" not in text
    text = await (await client.get("/runs", params={"branch": "master", "status": "queued"})).text()
    assert text.count('href="/runs/') == 3 and f"/matrix-runs/{pr_id}" not in text
    assert '<option value="queued" selected>' in text and 'value="master"' in text
    text = await (await client.get("/runs", params={"status": "failed", "project": "inet"})).text()
    assert text.count('href="/runs/') == 1
    text = await (await client.get("/runs", params={"project": "other"})).text()
    assert "No runs match these filters" in text


@pytest.mark.parametrize(
    "params, message",
    [
        ({"status": "bogus"}, "status must be one of queued, running"),
        ({"pr": "abc"}, "PR must be a pull request number"),
        ({"project": "nope"}, "there is no project named &#39;nope&#39;"),
        ({"page": "0"}, "page must be a whole number"),
        ({"page": "x"}, "page must be a whole number"),
    ],
)
async def test_runs_bad_filters_say_why(client, db, params, message):
    resp = await client.get("/runs", params=params)
    assert resp.status == 400
    assert message in await resp.text()


async def test_runs_pagination_keeps_filters(client, db):
    rule_id = await seed_catalog(db)
    async with db.begin() as session:
        rule = await session.get(AutoTestRule, rule_id)
        mr = TestMatrixRun(project_id=rule.project_id, matrix_name="smoke", trigger="push", git_ref="master",
                           github_owner="inet-framework", github_repo="inet", github_commit_sha=SHA)
        session.add(mr)
        await session.flush()
        session.add_all(
            TestRun(matrix_run_id=mr.id, project_id=rule.project_id, cell={"kind": "smoke"}, label=f"cell-{i:03d}",
                    git_ref="master", github_owner="inet-framework", github_repo="inet", github_commit_sha=SHA)
            for i in range(60)
        )
    text = await (await client.get("/runs", params={"branch": "master"})).text()
    assert "1–50 of 60 runs" in text and "cell-059" in text and "cell-009" not in text
    assert 'href="/runs?branch=master&amp;page=2" rel="next"' in text
    text = await (await client.get("/runs?branch=master&page=2")).text()
    assert "51–60 of 60 runs" in text and "cell-009" in text and "cell-059" not in text
    assert 'href="/runs?branch=master&amp;page=1" rel="prev"' in text
    text = await (await client.get("/runs?branch=master&page=9")).text()
    assert "cell-" not in text


async def test_matrix_run_page(client, db):
    rule_id = await seed_catalog(db)
    mr_id = await seed_push(db, rule_id, pr=7, statuses=(RunStatus.PASSED, RunStatus.FAILED, RunStatus.QUEUED))
    async with db.begin() as session:
        runs = list(await session.scalars(select(TestRun).where(TestRun.matrix_run_id == mr_id).order_by(TestRun.id)))
        start = utcnow() - dt.timedelta(minutes=3)
        runs[0].started_at, runs[0].finished_at, runs[0].test_exec_seconds = start, start + dt.timedelta(seconds=75), 74.6
        runs[0].result_code, runs[0].stdout, runs[0].worker = "PASS", "all good\n", "w1"
        runs[1].result_code, runs[1].stderr = "FAIL", "fingerprint mismatch: <b>1234</b>"
        session.add(GitHubCall(kind="status", coalesce_key="k", github_owner="inet-framework", github_repo="inet",
                               matrix_run_id=mr_id, payload={}, state=CallState.FAILED, attempts=1,
                               last_error="422: No commit found for SHA"))
    resp = await client.get(f"/matrix-runs/{mr_id}")
    assert resp.status == 200
    text = await resp.text()
    assert "2/3 done, 1 failed" in text
    assert f'href="https://github.com/inet-framework/inet/commit/{SHA}"' in text
    assert 'href="https://github.com/inet-framework/inet/pull/7"' in text
    for label in ("smoke/release", "fingerprint/release", "fingerprint/debug"):
        assert label in text
    assert "1 min 15 s" in text or "1 min 14 s" in text
    assert '<pre class="output">all good\n</pre>' in text
    assert "fingerprint mismatch: &lt;b&gt;1234&lt;/b&gt;" in text
    assert "GitHub refused the status" in text and "422: No commit found for SHA" in text


async def test_run_page(client, db):
    rule_id = await seed_catalog(db)
    mr_id = await seed_push(db, rule_id)
    async with db() as session:
        run_id = await session.scalar(select(TestRun.id).where(TestRun.matrix_run_id == mr_id).limit(1))
    text = await (await client.get(f"/runs/{run_id}")).text()
    assert "smoke/release" in text and "kind=smoke" in text and f"/matrix-runs/{mr_id}" in text
    assert "No output yet" in text


@pytest.mark.parametrize("path", ["/runs/999", "/matrix-runs/999", "/rules/999", "/runs/abc", "/rules/-1", "/nowhere"])
async def test_unknown_ids_are_404_pages(client, path):
    resp = await client.get(path)
    assert resp.status == 404
    assert resp.content_type == "text/html"
    text = await resp.text()
    assert "<h1>Not found</h1>" in text and "Traceback" not in text


async def test_api_404_stays_json(client):
    resp = await client.get("/api/nowhere")
    assert resp.status == 404
    assert resp.content_type == "application/json"


async def test_deliveries_page(client, db):
    text = await (await client.get("/deliveries")).text()
    assert "No deliveries yet" in text
    rule_id = await seed_catalog(db)
    mr_id = await seed_push(db, rule_id)
    async with db.begin() as session:
        session.add(WebhookDelivery(guid="ign-1", event="push", repository="acme/unknown",
                                    ignored="no project for acme/unknown"))
    text = await (await client.get("/deliveries")).text()
    assert "72d3162e-cc78-11e3-81ab-4c9367dc0958" in text
    assert "queued 3 runs" in text
    assert f'href="/matrix-runs/{mr_id}"' in text
    assert "no project for acme/unknown" in text and "st-ignored" in text


async def test_rules_page_lists_and_escapes(client, db):
    rule_id = await seed_catalog(db)
    async with db.begin() as session:
        await catalog.create_rule(session, "inet", "pr", XSS)
    text = await (await client.get("/rules")).text()
    assert f'href="/rules/{rule_id}"' in text and "inet-full" in text
    assert XSS not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "none → one smoke cell" in text
    assert "Log in with an admin token" in text and 'action="/rules"' not in text


async def test_rules_empty_state(client):
    text = await (await client.get("/rules")).text()
    assert "No rules yet" in text and "opp_ci rule create --project inet --type branch --pattern master" in text


async def test_rule_detail(client, db):
    rule_id = await seed_catalog(db)
    mr_id = await seed_push(db, rule_id)
    text = await (await client.get(f"/rules/{rule_id}")).text()
    assert "fingerprint/debug" in text and f"/matrix-runs/{mr_id}" in text and "st-enabled" in text


async def test_create_rule_through_form(admin_client, db):
    await seed_catalog(db)
    resp = await admin_client.post("/rules", data={
        "csrf_token": admin_client.csrf, "project": "inet", "rule_type": "tag", "pattern": "v*", "matrix": "",
        "enabled": "1",
    })
    assert resp.status == 200 and str(resp.url).endswith("/rules")
    text = await resp.text()
    assert "Rule 2 created: tag &#39;v*&#39; in inet" in text
    async with db() as session:
        rule = await catalog.get_rule(session, 2)
        assert (rule.rule_type.value, rule.pattern, rule.matrix_id, rule.enabled) == ("tag", "v*", None, True)
    # The message is shown once.
    assert "Rule 2 created" not in await (await admin_client.get("/rules")).text()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"matrix": "no-such"}, "no matrix named &#39;no-such&#39;"),
        ({"pattern": "  "}, "pattern must be a non-empty string"),
        ({"matrix": "other-m"}, "matrix &#39;other-m&#39; belongs to project &#39;other&#39;, not &#39;inet&#39;"),
        ({"rule_type": "weekly"}, "rule_type must be one of branch, pr, tag"),
        ({"project": "ghost"}, "no project named &#39;ghost&#39;"),
    ],
)
async def test_create_rule_bad_input_saves_nothing(admin_client, db, fields, message):
    await seed_catalog(db)
    data = {"csrf_token": admin_client.csrf, "project": "inet", "rule_type": "branch", "pattern": "dev",
            "matrix": "inet-full", **fields}
    resp = await admin_client.post("/rules", data=data)
    assert resp.status in (409, 422)
    text = await resp.text()
    assert f"Nothing was saved: {message}" in text
    assert f'value="{data["pattern"]}"' in text  # the form keeps what was typed
    assert await rule_count(db) == 1


async def test_disable_enable_and_delete_rule(admin_client, db):
    rule_id = await seed_catalog(db)
    resp = await admin_client.post(f"/rules/{rule_id}/enabled", data={"csrf_token": admin_client.csrf, "enabled": "0"})
    text = await resp.text()
    assert str(resp.url).endswith(f"/rules/{rule_id}") and f"Rule {rule_id} disabled." in text and "st-disabled" in text
    resp = await admin_client.post(f"/rules/{rule_id}/enabled", data={"csrf_token": admin_client.csrf, "enabled": "1"})
    assert "st-enabled" in await resp.text()
    resp = await admin_client.post(f"/rules/{rule_id}/delete", data={"csrf_token": admin_client.csrf})
    assert str(resp.url).endswith("/rules") and f"Rule {rule_id} deleted." in await resp.text()
    assert await rule_count(db) == 0
    resp = await admin_client.post(f"/rules/{rule_id}/delete", data={"csrf_token": admin_client.csrf})
    assert resp.status == 404


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
@pytest.mark.parametrize("action", ["create", "disable", "delete", "logout"])
async def test_forms_refuse_missing_or_wrong_csrf(admin_client, db, token, action):
    rule_id = await seed_catalog(db)
    path, data = {
        "create": ("/rules", {"project": "inet", "rule_type": "branch", "pattern": "x"}),
        "disable": (f"/rules/{rule_id}/enabled", {"enabled": "0"}),
        "delete": (f"/rules/{rule_id}/delete", {}),
        "logout": ("/logout", {}),
    }[action]
    if token is not None:
        data["csrf_token"] = token
    resp = await admin_client.post(path, data=data)
    assert resp.status == 403
    text = await resp.text()
    assert "security token is missing or out of date, so nothing was changed" in text
    async with db() as session:
        rules = await catalog.list_rules(session)
    assert [(r.pattern, r.enabled) for r in rules] == [("master", True)]
    assert "Log out" in await (await admin_client.get("/")).text()  # still logged in


async def test_changes_need_admin_login(client, db):
    rule_id = await seed_catalog(db)
    csrf = CSRF_RE.search(await (await client.get("/login")).text())[1]
    for path, data in [("/rules", {"project": "inet", "rule_type": "branch", "pattern": "x"}),
                       (f"/rules/{rule_id}/delete", {}), (f"/rules/{rule_id}/enabled", {"enabled": "0"})]:
        resp = await client.post(path, data={**data, "csrf_token": csrf})
        assert resp.status == 403
        assert "Changes need an admin login, so nothing was changed" in await resp.text()
    assert await rule_count(db) == 1


@pytest.mark.parametrize("role", [None, Role.READONLY, Role.WORKER, "revoked"])
async def test_login_refuses_without_saying_why(client, make_token, db, role):
    if role is None:
        token = "oppci_does-not-exist"
    elif role == "revoked":
        token = await make_token(Role.ADMIN)
        async with db.begin() as session:
            await tokens.revoke(session, (await tokens.lookup(session, token)).id)
    else:
        token = await make_token(role)
    csrf = CSRF_RE.search(await (await client.get("/login")).text())[1]
    resp = await client.post("/login", data={"token": token, "csrf_token": csrf})
    assert resp.status == 403
    text = await resp.text()
    assert "That token is invalid or not an admin token." in text
    assert token not in text
    assert "Log out" not in await (await client.get("/")).text()


async def test_login_needs_csrf(client, make_token):
    resp = await client.post("/login", data={"token": await make_token(Role.ADMIN)})
    assert resp.status == 403
    assert "Log out" not in await (await client.get("/")).text()


async def test_login_cookie_and_logout(client, make_token):
    token = await make_token(Role.ADMIN, "alice")
    csrf = CSRF_RE.search(await (await client.get("/login")).text())[1]
    resp = await client.post("/login", data={"token": token, "csrf_token": csrf, "next": "//evil.example/x"},
                             allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/"
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # public_url is http here
    assert token not in cookie and "alice" not in cookie
    text = await (await client.get("/")).text()
    assert "alice" in text and "Logged in with admin token alice." in text
    csrf = CSRF_RE.search(text)[1]
    resp = await client.post("/logout", data={"csrf_token": csrf})
    text = await resp.text()
    assert "Logged out." in text and "alice" not in text and "Log in" in text


async def test_session_cookie_secure_with_https(aiohttp_client, settings, engine, make_token):
    client = await aiohttp_client(create_app(settings.replace(public_url="https://ci.example.test"), engine=engine,
                                             background=False))
    resp = await client.get("/login")
    assert "Secure" in resp.headers["Set-Cookie"]


async def test_revoked_token_ends_the_session(admin_client, db):
    async with db.begin() as session:
        for row in await tokens.list_tokens(session):
            await tokens.revoke(session, row.id)
    text = await (await admin_client.get("/rules")).text()
    assert "Log out" not in text and "Log in with an admin token" in text
    resp = await admin_client.post("/rules/1/delete", data={"csrf_token": admin_client.csrf})
    assert resp.status == 403


async def test_tampered_cookie_is_a_fresh_session(client, make_token):
    client.session.cookie_jar.update_cookies({COOKIE_NAME: "gAAAAAnot-a-real-fernet-token"})
    resp = await client.get("/rules")
    assert resp.status == 200 and "Log out" not in await resp.text()


async def test_require_login(aiohttp_client, settings, engine, make_token, db):
    await seed_catalog(db)
    client = await aiohttp_client(create_app(settings.replace(web_require_login=True), engine=engine, background=False))
    for path in ("/", "/runs", "/rules", "/rules/1", "/deliveries", "/matrix-runs/1"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 303, path
        assert resp.headers["Location"] == f"/login?next={path}"
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/login")
    assert resp.status == 200 and "Admin token" in await resp.text()
    csrf = CSRF_RE.search(await resp.text())[1]
    resp = await client.post("/login", data={"token": await make_token(Role.ADMIN), "csrf_token": csrf,
                                             "next": "/rules/1"})
    assert resp.status == 200 and str(resp.url).endswith("/rules/1")
    assert "master" in await resp.text()


async def test_pages_open_without_login_by_default(client, db):
    await seed_catalog(db)
    for path in ("/", "/runs", "/rules", "/rules/1", "/deliveries"):
        assert (await client.get(path)).status == 200, path


async def test_session_key_file(settings, engine, aiohttp_client):
    await aiohttp_client(create_app(settings, engine=engine, background=False))
    path = settings.var_dir / SESSION_KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = path.read_text()
    await aiohttp_client(create_app(settings, engine=engine, background=False))
    assert path.read_text() == key  # reused, so sessions survive a restart


async def test_session_survives_restart(aiohttp_client, settings, engine, make_token):
    first = await aiohttp_client(create_app(settings, engine=engine, background=False))
    await login(first, await make_token(Role.ADMIN, "alice"))
    second = await aiohttp_client(create_app(settings, engine=engine, background=False))
    second.session.cookie_jar.update_cookies(
        {c.key: c.value for c in first.session.cookie_jar}, response_url=second.make_url("/")
    )
    assert "alice" in await (await second.get("/")).text()


async def test_security_headers(client):
    resp = await client.get("/")
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_static_css(client):
    text = await (await client.get("/")).text()
    href = re.search(r'<link rel="stylesheet" href="([^"]+)"', text)[1]
    resp = await client.get(href)
    assert resp.status == 200 and "--success: #1a7f37" in await resp.text()


async def test_oversized_form_is_refused(admin_client, db):
    resp = await admin_client.post("/rules", data={"csrf_token": admin_client.csrf, "pattern": "x" * 70_000})
    assert resp.status == 413
    assert await rule_count(db) == 0


async def test_wrong_method_is_a_page(client):
    resp = await client.get("/logout")
    assert resp.status == 405
    assert resp.content_type == "text/html" and "Method not allowed" in await resp.text()


async def test_unexpected_error_is_a_page_without_trace(client, monkeypatch, caplog):
    async def broken(session, project_name=None):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(catalog, "list_rules", broken)
    resp = await client.get("/rules")
    assert resp.status == 500
    text = await resp.text()
    assert "The error was logged on the server" in text
    assert "database on fire" not in text and "Traceback" not in text
    assert "database on fire" in caplog.text


async def test_empty_deliveries_name_the_webhook_url(client):
    assert "http://ci.example.test/api/github/webhook" in await (await client.get("/deliveries")).text()


@pytest.mark.parametrize(
    "seconds_ago, text",
    [(5, "just now"), (90, "2 minutes ago"), (3 * 3600, "3 hours ago"), (86400, "1 day ago"), (-7200, "in 2 hours")],
)
def test_ago(seconds_ago, text):
    now = dt.datetime(2026, 12, 4, 20, 0, tzinfo=dt.timezone.utc)
    assert filters.ago(now - dt.timedelta(seconds=seconds_ago), now) == text


@pytest.mark.parametrize("seconds, text", [(0.42, "0.4 s"), (12.4, "12 s"), (185, "3 min 05 s"), (3725, "1 h 02 min")])
def test_duration(seconds, text):
    assert filters.duration(seconds) == text


async def test_unusable_session_key_file_is_replaced(settings, engine, aiohttp_client):
    path = settings.var_dir / SESSION_KEY_FILE
    path.parent.mkdir(parents=True)
    path.write_text("not a key\n")
    client = await aiohttp_client(create_app(settings, engine=engine, background=False))
    assert (await client.get("/login")).status == 200
    assert path.read_text() != "not a key\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_login_never_logs_the_token(client, make_token, caplog):
    caplog.set_level(logging.INFO)
    token = await make_token(Role.ADMIN, "alice")
    await login(client, token)
    csrf = CSRF_RE.search(await (await client.get("/login")).text())[1]
    await client.post("/login", data={"token": token + "x", "csrf_token": csrf})
    assert "web login with admin token" in caplog.text and "web login refused" in caplog.text
    assert token not in caplog.text


@pytest.mark.parametrize("value", ["a\x00b", "\x1b[31m", "a\nb"])
@pytest.mark.parametrize(
    "path, name",
    [("/runs", n) for n in ("project", "status", "branch", "pr", "commit", "page")] + [("/deliveries", "page")],
)
async def test_control_characters_in_filters_are_400_naming_the_filter(client, db, path, name, value):
    await seed_catalog(db)
    resp = await client.get(path, params={name: value, "branch": "master"} if name != "branch" else {name: value})
    assert resp.status == 400
    text = await resp.text()
    assert f"{name} must not contain control characters" in text
    assert "\x00" not in text and "Traceback" not in text


@pytest.mark.parametrize("params, message", [({"page": "²"}, "page must be a whole number"),
                                             ({"pr": "²"}, "PR must be a pull request number"),
                                             ({"pr": "#0"}, "PR must be a pull request number"),
                                             ({"page": "9" * 5000}, "page must be a whole number"),
                                             ({"pr": "9" * 5000}, "PR must be a pull request number")])
async def test_runs_unicode_digits_are_400(client, params, message):
    resp = await client.get("/runs", params=params)
    assert resp.status == 400 and message in await resp.text()


async def test_bad_filter_keeps_the_other_filters_in_the_form(client, db):
    await seed_catalog(db)
    text = await (await client.get("/runs", params={"branch": "a\x00b", "pr": "42", "status": "queued"})).text()
    assert "branch must not contain control characters" in text
    assert 'name="pr" value="42"' in text and '<option value="queued" selected>' in text
    assert 'name="branch" value=""' in text


@pytest.mark.parametrize("path", ["/runs/²", "/matrix-runs/²", "/rules/%C2%B2", "/runs/0", "/runs/" + "9" * 5000])
async def test_unicode_digit_ids_are_404(client, path):
    assert (await client.get(path)).status == 404


async def test_login_next_with_control_characters_goes_home(client, make_token):
    page = await (await client.get("/login", params={"next": "/runs\x00x"})).text()
    assert 'name="next" value="/"' in page
    resp = await client.post("/login", data={"token": await make_token(Role.ADMIN), "next": "/rules\r\nX-Evil: 1",
                                             "csrf_token": CSRF_RE.search(page)[1]}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/"


@pytest.mark.parametrize("field", ["project", "pattern", "matrix", "rule_type"])
async def test_rule_form_with_nul_saves_nothing(admin_client, db, field):
    await seed_catalog(db)
    data = {"csrf_token": admin_client.csrf, "project": "inet", "rule_type": "branch", "pattern": "dev",
            "matrix": "inet-full", field: "in\x00et"}
    resp = await admin_client.post("/rules", data=data)
    assert resp.status in (400, 409, 422)
    assert "Nothing was saved" in await resp.text()
    assert await rule_count(db) == 1


def pending_call(mr_id, kind="status", **fields):
    return GitHubCall(kind=kind, coalesce_key=f"{kind}-{mr_id}-{fields.get('state', 'p')}", github_owner="inet-framework",
                      github_repo="inet", matrix_run_id=mr_id, payload={}, **fields)


async def seed_calls(db):
    rule_id = await seed_catalog(db)
    mr_id = await seed_push(db, rule_id, pr=7)
    async with db.begin() as session:
        session.add_all([
            pending_call(mr_id),
            pending_call(mr_id, "pr_comment", attempts=2, next_attempt_at=utcnow() + dt.timedelta(minutes=5),
                         last_error="502: Bad Gateway"),
            pending_call(mr_id, "workflow_dispatch"),
            pending_call(mr_id, state=CallState.DONE, attempts=1, sent_at=utcnow()),
        ])
    return mr_id


BANNER = "GitHub is not connected:"


async def test_not_connected_banner_counts_waiting_calls(client, db):
    mr_id = await seed_calls(db)
    for path in ("/", "/runs", "/deliveries", f"/matrix-runs/{mr_id}", "/rules"):
        text = await (await client.get(path)).text()
        assert BANNER in text, path
        assert "2 GitHub calls are waiting" in text  # status and comment; the dispatch needs another token
        assert "<code>OPP_CI_GITHUB_TOKEN</code>" in text and 'href="/github/setup"' in text
    text = await (await client.get(f"/matrix-runs/{mr_id}")).text()
    assert text.count("waits for GitHub credentials") == 2
    assert "502: Bad Gateway" in text and "not sent yet" in text
    assert 'class="badge st-call-done">sent</span>' in text
    assert text.count('class="badge st-call-pending">waiting</span>') == 3


async def test_banner_says_one_call_is_waiting(client, db):
    rule_id = await seed_catalog(db)
    mr_id = await seed_push(db, rule_id)
    async with db.begin() as session:
        session.add(pending_call(mr_id))
    assert "1 GitHub call is waiting" in await (await client.get("/")).text()


async def test_no_banner_and_no_count_with_a_token(aiohttp_client, settings, engine, db):
    mr_id = await seed_calls(db)
    client = await aiohttp_client(create_app(settings.replace(github_token="ghp_test"), engine=engine,
                                             background=False))
    statements = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        assert BANNER not in await (await client.get("/")).text()
        text = await (await client.get(f"/matrix-runs/{mr_id}")).text()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert len([s for s in statements if "github_calls" in s]) == 1  # only the matrix run's own calls
    assert BANNER not in text and "waits for GitHub credentials" not in text
    assert "due now" in text and re.search(r"next attempt <time[^>]*>in 5 minutes</time>", text)
    assert "ghp_test" not in text


async def test_banner_goes_when_the_app_is_registered(client, settings, db):
    await seed_calls(db)
    assert BANNER in await (await client.get("/")).text()
    settings.use_github_app("12345", generate_rsa_key()[0])
    assert BANNER not in await (await client.get("/")).text()


async def test_no_banner_on_login_page_when_login_is_required(aiohttp_client, settings, engine, db):
    await seed_calls(db)
    client = await aiohttp_client(create_app(settings.replace(web_require_login=True), engine=engine, background=False))
    assert BANNER not in await (await client.get("/login")).text()


async def test_rule_form_with_a_file_instead_of_text_saves_nothing(admin_client, db):
    await seed_catalog(db)
    data = aiohttp.FormData({"csrf_token": admin_client.csrf, "project": "inet", "rule_type": "branch", "matrix": ""})
    data.add_field("pattern", b"dev", filename="pattern.txt")
    resp = await admin_client.post("/rules", data=data)
    assert resp.status == 422 and "Nothing was saved: pattern must be a non-empty string" in await resp.text()
    assert await rule_count(db) == 1


async def test_failed_calls_on_deliveries_and_matrix_run_pages(client, db):
    rule_id = await seed_catalog(db)
    mr_id = await seed_push(db, rule_id)
    async with db.begin() as session:
        session.add_all([
            pending_call(mr_id, state=CallState.FAILED, attempts=1, last_error="404: Not Found (repository gone)"),
            pending_call(mr_id, "workflow_dispatch", state=CallState.FAILED, attempts=0,
                         last_error="no OPP_CI_GITHUB_ACTIONS_TOKEN configured"),
        ])
    text = await (await client.get("/deliveries")).text()
    assert re.search(rf'GitHub refused</span> status for\s+<a href="/matrix-runs/{mr_id}">#{mr_id}</a>: 404: Not Found', text)
    assert re.search(r"not sent</span> workflow dispatch for\s+<a[^>]+>#\d+</a>: no OPP_CI_GITHUB_ACTIONS_TOKEN", text)
    text = await (await client.get(f"/matrix-runs/{mr_id}")).text()
    assert "GitHub refused the status</strong> after 1 attempt:" in text
    assert "The workflow dispatch was not sent</strong>:" in text and "GitHub refused the workflow" not in text
    assert text.count('class="badge st-call-failed">failed</span>') == 2


async def test_links_go_to_github_enterprise_when_configured(aiohttp_client, settings, engine, db):
    from opp_ci_app.app import create_app

    client = await aiohttp_client(create_app(settings.replace(github_base_url="https://ghe.example.org/api/v3"),
                                             engine=engine, background=False))
    mr_id = await seed_push(db, await seed_catalog(db), pr=7)
    text = await (await client.get(f"/matrix-runs/{mr_id}")).text()
    assert f'href="https://ghe.example.org/inet-framework/inet/commit/{SHA}"' in text
    assert 'href="https://ghe.example.org/inet-framework/inet/pull/7"' in text
    assert "https://github.com/" not in text
