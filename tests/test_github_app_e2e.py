"""Issue 6 end to end: from an empty var/ to App mode, a finished push's one notes dispatch, an uninstalled repository."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid

import pytest

from opp_ci_app import catalog
from opp_ci_app.app import create_app
from opp_ci_app.appkeys import SETTINGS
from opp_ci_app.github.manifest import load_stored_app
from opp_ci_app.github.sender import Sender
from opp_ci_app.models import Role
from tests.plugins.fake_github import ACTIONS_TOKEN, drain
from tests.test_github_setup import start_flow
from tests.test_web_pages import login
from tests.webhooks import WEBHOOK, push_payload

OWNER, REPO, SHA = "inet-framework", "inet", "a" * 40


def signed(event: str, data: dict, secret: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(data).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
        "Content-Type": "application/json",
    }


@pytest.fixture
async def client(aiohttp_client, github_settings, engine, db, make_token):
    """The app with no GitHub credentials at all (but an Actions token), an admin logged in, and project inet."""
    settings = github_settings.replace(github_token=None)
    app = create_app(settings, engine=engine, background=False)
    client = await aiohttp_client(app)
    client.csrf = await login(client, await make_token(Role.ADMIN, "alice"))
    async with db.begin() as session:
        await catalog.create_project(session, "inet", OWNER, REPO)
        await catalog.create_matrix(session, "inet", "inet-full", {"axes": {"kind": ["smoke", "fingerprint"]}})
        await catalog.create_rule(session, "inet", "branch", "master", "inet-full")
    return client


async def register_app(client) -> str:
    """Go through /github/setup and back; returns the webhook secret GitHub generated."""
    action, _ = await start_flow(client, account="user")
    resp = await client.get("/github/setup/callback", params={"code": "c0de", "state": action.rsplit("state=", 1)[1]})
    assert resp.status == 200, await resp.text()
    return load_stored_app(client.app[SETTINGS]).webhook_secret


async def run_all(client, make_token, code: str = "PASS") -> None:
    headers = {"Authorization": f"Bearer {await make_token(Role.WORKER)}"}
    while True:
        job = (await (await client.post("/api/workers/poll", json={"worker": "w"}, headers=headers)).json())["job"]
        if job is None:
            return
        resp = await client.post("/api/workers/result", json={"run_id": job["run_id"], "result_code": code}, headers=headers)
        assert resp.status == 200


async def test_from_empty_var_to_app_mode_and_one_notes_dispatch(client, fake_github, github_clock, make_token, readonly_headers):
    secret = await register_app(client)
    assert secret and secret != "It's a Secret to Everybody"

    # The running app now verifies deliveries with the App's secret, and only with it.
    body, headers = signed("push", push_payload("refs/heads/master", SHA), "It's a Secret to Everybody")
    assert (await client.post(WEBHOOK, data=body, headers=headers)).status == 401
    data = push_payload("refs/heads/master", SHA)
    data["installation"] = {"id": 4242}
    body, headers = signed("push", data, secret)
    resp = await client.post(WEBHOOK, data=body, headers=headers)
    assert resp.status == 200 and (await resp.json())["runs_queued"] == 2
    sender = Sender.for_app(client.app, clock=github_clock)
    await drain(sender, github_clock)

    await run_all(client, make_token)
    await drain(sender, github_clock)

    # Statuses went out with an installation token minted from the key the manifest flow returned.
    minted = {m["token"] for m in fake_github.minted}
    assert len(fake_github.minted) == 1 and fake_github.minted[0]["installation_id"] == 4242
    status_posts = fake_github.requests("POST", rf"/repos/{OWNER}/{REPO}/statuses/{SHA}")
    assert [c.token in minted for c in status_posts] == [True, True]
    assert [s["state"] for s in fake_github.statuses(OWNER, REPO, SHA)] == ["pending", "success"]

    # Exactly one dispatch, with the Actions token; the Actions token went nowhere else but to find the branch.
    dispatches = fake_github.dispatches(OWNER, REPO)
    assert [(workflow, token) for workflow, _body, token in dispatches] == [("ci-notes.yml", ACTIONS_TOKEN)]
    assert dispatches[0][1] == {"ref": "master"}
    with_actions = {(c.method, c.path) for c in fake_github.calls if c.token == ACTIONS_TOKEN}
    assert with_actions <= {
        ("GET", f"/repos/{OWNER}/{REPO}"),
        ("POST", f"/repos/{OWNER}/{REPO}/actions/workflows/ci-notes.yml/dispatches"),
    }

    # And the workflow will find the note to write.
    notes = await (await client.get(f"/api/notes/{OWNER}/{REPO}", headers=readonly_headers)).json()
    assert [n["sha"] for n in notes] == [SHA]
    assert notes[0]["note"].startswith("✅ PASS 2/2\n")


async def test_repository_the_app_no_longer_covers_fails_clearly(client, fake_github, github_clock):
    secret = await register_app(client)
    fake_github.default_installation_id = None  # the App was uninstalled from every repository
    data = push_payload("refs/heads/master", SHA)
    body, headers = signed("push", data, secret)
    reply = await (await client.post(WEBHOOK, data=body, headers=headers)).json()
    [matrix_run_id] = reply["matrix_runs"]

    await drain(Sender.for_app(client.app, clock=github_clock), github_clock)
    assert fake_github.statuses(OWNER, REPO, SHA) == []

    message = f"the GitHub App is not installed on {OWNER}/{REPO}"
    deliveries = await (await client.get("/deliveries")).text()
    assert "GitHub refused" in deliveries and message in deliveries
    page = await (await client.get(f"/matrix-runs/{matrix_run_id}")).text()
    assert message in page
