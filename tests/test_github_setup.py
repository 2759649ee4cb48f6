"""The App manifest flow: /github/setup to GitHub and back, credentials kept in var/, App mode at once."""

import json
import os
import re
import stat
from html import unescape

import pytest

from opp_ci_app.app import create_app
from opp_ci_app.appkeys import SETTINGS
from opp_ci_app.github.manifest import github_web_url, load_manifest, load_stored_app, with_stored_app
from opp_ci_app.models import Role
from tests.test_web_pages import CSRF_RE, login

FORM_ACTION_RE = re.compile(r'<form method="post" action="([^"]+)">\s*<input type="hidden" name="manifest" value="([^"]+)"')


@pytest.fixture
async def setup_client(aiohttp_client, github_settings, engine, make_token):
    """The app pointed at the fake GitHub, with an admin logged in."""
    app = create_app(github_settings.replace(github_token=None), engine=engine, background=False)
    client = await aiohttp_client(app)
    client.csrf = await login(client, await make_token(Role.ADMIN, "alice"))
    return client


async def start_flow(client, **form) -> tuple[str, dict]:
    resp = await client.post("/github/setup", data={"csrf_token": client.csrf, **form})
    assert resp.status == 200, await resp.text()
    action, manifest = FORM_ACTION_RE.search(await resp.text()).groups()
    return unescape(action), json.loads(unescape(manifest))


def test_manifest_points_at_public_url(settings):
    manifest = load_manifest(settings)
    assert manifest["hook_attributes"]["url"] == "http://ci.example.test/api/github/webhook"
    assert manifest["redirect_url"] == "http://ci.example.test/github/setup/callback"
    assert manifest["default_events"] == ["push", "pull_request"]
    assert manifest["default_permissions"] == {
        "statuses": "write", "pull_requests": "write", "issues": "write", "contents": "read", "metadata": "read",
    }


@pytest.mark.parametrize(
    "api, web",
    [("https://api.github.com", "https://github.com"), ("https://ghe.example.org/api/v3", "https://ghe.example.org"),
     ("http://127.0.0.1:9999", "http://127.0.0.1:9999")],
)
def test_github_web_url(api, web):
    assert github_web_url(api) == web


async def test_setup_needs_admin_login(client):
    resp = await client.get("/github/setup", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/login")
    csrf = CSRF_RE.search(await (await client.get("/login")).text())[1]
    resp = await client.post("/github/setup", data={"csrf_token": csrf, "account": "user"})
    assert resp.status == 403


async def test_whole_flow_switches_to_app_mode(setup_client, fake_github, github_settings):
    client = setup_client
    page = await (await client.get("/github/setup")).text()
    assert "no GitHub credentials yet" in page

    action, manifest = await start_flow(client, account="organization", organization="inet-framework")
    assert action.startswith(f"{fake_github.url}/organizations/inet-framework/settings/apps/new?state=")
    assert manifest["hook_attributes"]["url"] == "http://ci.example.test/api/github/webhook"
    state = action.rsplit("state=", 1)[1]

    # GitHub sends the browser back (without our SameSite=Strict cookie) with a code and our state.
    resp = await client.get("/github/setup/callback", params={"code": "abc123", "state": state}, cookies={})
    text = await resp.text()
    assert resp.status == 200, text
    assert "opp_ci now runs in App mode" in text
    assert [c.path for c in fake_github.requests("POST", r"/app-manifests/.*")] == ["/app-manifests/abc123/conversions"]

    var = github_settings.var_dir
    for name in ("github_app.json", "github_app.pem"):
        assert stat.S_IMODE(os.stat(var / name).st_mode) == 0o600
    stored = load_stored_app(github_settings)
    assert stored.private_key == fake_github.app_private_key_pem
    live = client.app[SETTINGS]
    assert live.app_mode and live.github_app_id == stored.app_id
    assert live.webhook_secret == stored.webhook_secret
    assert stored.private_key not in text

    # A later start finds the App in var/ by itself.
    assert with_stored_app(github_settings.replace(github_token=None)).app_mode

    # The state is single-use.
    resp = await client.get("/github/setup/callback", params={"code": "again", "state": state})
    assert resp.status == 403


async def test_callback_refuses_unknown_state_and_bad_code(setup_client, fake_github, github_settings):
    client = setup_client
    resp = await client.get("/github/setup/callback", params={"code": "abc", "state": "forged"})
    assert resp.status == 403 and "not started here" in await resp.text()

    action, _ = await start_flow(client, account="user")
    assert action.startswith(f"{fake_github.url}/settings/apps/new?state=")
    fake_github.bad_manifest_codes.add("stale")
    resp = await client.get("/github/setup/callback", params={"code": "stale", "state": action.rsplit("state=", 1)[1]})
    assert resp.status == 502
    assert "GitHub refused the App registration code" in await resp.text()
    assert not (github_settings.var_dir / "github_app.pem").exists()


async def test_organization_name_is_checked(setup_client):
    resp = await setup_client.post(
        "/github/setup", data={"csrf_token": setup_client.csrf, "account": "organization", "organization": "bad name!"}
    )
    assert resp.status == 422
    assert "Enter the organization" in await resp.text()


async def test_webhook_secret_from_the_environment_wins(setup_client, github_settings):
    client = setup_client
    live = client.app[SETTINGS]
    object.__setattr__(live, "webhook_secret_from_env", True)  # as load_settings does for OPP_CI_GITHUB_WEBHOOK_SECRET
    action, _ = await start_flow(client, account="user")
    resp = await client.get("/github/setup/callback", params={"code": "e1", "state": action.rsplit("state=", 1)[1]})
    assert "is set and wins over the secret GitHub" in await resp.text()
    assert live.app_mode and live.webhook_secret == "It's a Secret to Everybody"
    restarted = with_stored_app(github_settings.replace(github_token=None, webhook_secret="from-env", webhook_secret_from_env=True))
    assert restarted.app_mode and restarted.webhook_secret == "from-env"
    assert with_stored_app(github_settings.replace(github_token=None)).webhook_secret == load_stored_app(github_settings).webhook_secret
