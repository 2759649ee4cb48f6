"""Token mode and App mode: JWTs the fake verifies, installation tokens minted once and reused until near expiry."""

import asyncio
import time

import jwt
import pytest
from sqlalchemy import select

from opp_ci_app import catalog
from opp_ci_app.app import create_app
from opp_ci_app.appkeys import SERVICES
from opp_ci_app.github.auth import AuthMode, GitHubAuth, NotConfigured
from opp_ci_app.models import CallState, GitHubCall, Project
from tests.plugins.fake_github import ACTIONS_TOKEN, USER_TOKEN
from tests.test_sender import MARKER, OWNER, REPO, SHA, comment, posted, queue, status

INSTALLATION = 4242


@pytest.fixture
def app_settings(github_settings, fake_github):
    pem = fake_github.set_app(app_id=1234, slug="opp-ci", installation_id=INSTALLATION)
    return github_settings.replace(github_token=None, github_app_id="1234", github_app_private_key=pem)


@pytest.fixture
def app_auth(app_settings, github_clock):
    return GitHubAuth.from_settings(app_settings, clock=github_clock.epoch)


async def test_modes_follow_settings(github_settings, app_settings):
    assert GitHubAuth.from_settings(github_settings).mode is AuthMode.TOKEN
    assert GitHubAuth.from_settings(app_settings).mode is AuthMode.APP
    assert GitHubAuth.from_settings(github_settings.replace(github_token=None)).mode is AuthMode.NONE


async def test_app_jwt_is_rs256_backdated_and_short(fake_github, app_auth, github_http):
    assert await app_auth.own_login(github_http) == "opp-ci[bot]"
    [call] = fake_github.requests("GET", "/app")
    assert call.headers["authorization"].startswith("bearer ")
    token = call.headers["authorization"].split(" ", 1)[1]
    claims = jwt.decode(token, fake_github.app_public_key_pem, algorithms=["RS256"])
    now = time.time()
    assert claims["iss"] == "1234"
    assert now - 70 <= claims["iat"] <= now - 50
    assert claims["exp"] - claims["iat"] <= 600
    assert call.headers["x-github-api-version"] == "2022-11-28"


async def test_statuses_in_app_mode_use_one_installation_token(
    db, fake_github, app_auth, make_sender, github_clock
):
    async with db.begin() as session:
        project = await catalog.create_project(session, "inet", OWNER, REPO)
    sender = make_sender(auth=app_auth)
    for i in range(3):
        await queue(db, status(sha=f"{i:040x}", state="success", description="passed", project_id=project.id))
        await sender.run_once()
        github_clock.advance(600)
    assert len(fake_github.minted) == 1
    token = fake_github.minted[0]["token"]
    assert [c.token for c in fake_github.requests("POST", r"/repos/.*/statuses/.*")] == [token] * 3
    assert posted(fake_github, f"{2:040x}") == [("opp_ci/smoke", "success")]
    # The installation was looked up once and is now known to the project.
    assert len(fake_github.requests("GET", rf"/repos/{OWNER}/{REPO}/installation")) == 1
    async with db() as session:
        assert (await session.get(Project, project.id)).installation_id == INSTALLATION
    assert [c.path for c in fake_github.requests("POST", r"/app/.*")] == [
        f"/app/installations/{INSTALLATION}/access_tokens"
    ]


async def test_installation_id_stored_by_the_webhook_is_used(db, fake_github, app_auth, make_sender):
    async with db.begin() as session:
        project = await catalog.create_project(session, "inet", OWNER, REPO)
        project.installation_id = 77
    fake_github.installations[f"{OWNER}/{REPO}"] = 77
    await queue(db, status(project_id=project.id))
    await make_sender(auth=app_auth).run_once()
    assert fake_github.requests("GET", r".*/installation") == []
    assert fake_github.minted[0]["installation_id"] == 77


async def test_token_is_minted_again_five_minutes_before_expiry(fake_github, app_auth, github_http, github_clock):
    first = await app_auth.installation_token(github_http, INSTALLATION)
    github_clock.advance(3600 - 300 - 5)
    assert await app_auth.installation_token(github_http, INSTALLATION) == first
    github_clock.advance(10)
    second = await app_auth.installation_token(github_http, INSTALLATION)
    assert second != first
    assert [m["token"] for m in fake_github.minted] == [first, second]


async def test_one_mint_at_a_time_per_installation(fake_github, app_auth, github_http):
    fake_github.fail("POST", r"/app/installations/\d+/access_tokens", None, delay=0.1)
    tokens = await asyncio.gather(*(app_auth.installation_token(github_http, INSTALLATION) for _ in range(10)))
    assert len(set(tokens)) == 1
    assert len(fake_github.minted) == 1


async def test_revoked_installation_token_is_replaced(db, fake_github, app_auth, make_sender, github_clock):
    from tests.plugins.fake_github import drain

    sender = make_sender(auth=app_auth)
    await queue(db, status(sha="a" * 40))
    await sender.run_once()
    del fake_github.tokens[fake_github.minted[0]["token"]]
    await queue(db, status(sha="b" * 40, state="success", description="passed"))
    await drain(sender, github_clock)
    assert len(fake_github.minted) == 2
    assert posted(fake_github, "b" * 40) == [("opp_ci/smoke", "success")]


async def test_app_not_installed_on_the_repository_fails_the_call(db, fake_github, app_auth, make_sender):
    fake_github.default_installation_id = None
    await queue(db, status())
    await make_sender(auth=app_auth).run_once()
    async with db() as session:
        row = (await session.scalars(select(GitHubCall))).one()
    assert row.state == CallState.FAILED
    assert row.last_error == f"the GitHub App is not installed on {OWNER}/{REPO}"


async def test_wrong_private_key_is_refused_by_github(db, fake_github, app_settings, make_sender, github_clock):
    from tests.plugins.fake_github import drain, generate_rsa_key

    other_key, _ = generate_rsa_key()
    auth = GitHubAuth.from_settings(app_settings.replace(github_app_private_key=other_key))
    await queue(db, status())
    await drain(make_sender(auth=auth), github_clock)
    async with db() as session:
        row = (await session.scalars(select(GitHubCall))).one()
    assert (row.state, row.attempts) == (CallState.FAILED, 3)
    assert "401" in row.last_error
    assert other_key not in row.last_error and fake_github.statuses(OWNER, REPO, SHA) == []


async def test_app_comment_author_is_the_bot(db, fake_github, app_auth, make_sender):
    async with db.begin() as session:
        project = await catalog.create_project(session, "inet", OWNER, REPO)
    # A human's comment with our marker (pasted, say) is not ours to edit.
    fake_github.add_comment(OWNER, REPO, 7, f"{MARKER}\nquoted", fake_github.user_login)
    await queue(db, comment(project.id, "1/1 done"))
    await make_sender(auth=app_auth).run_once()
    by_author = {c["user"]["login"]: c["body"] for c in fake_github.comments(OWNER, REPO, 7)}
    assert by_author == {fake_github.user_login: f"{MARKER}\nquoted", "opp-ci[bot]": f"{MARKER}\n1/1 done"}


async def test_token_mode_login_from_user(fake_github, github_settings, github_http):
    auth = GitHubAuth.from_settings(github_settings)
    assert await auth.own_login(github_http) == fake_github.user_login
    assert await auth.own_login(github_http) == fake_github.user_login
    assert len(fake_github.requests("GET", "/user")) == 1


async def test_configure_switches_credentials_at_run_time(fake_github, github_settings, github_http):
    auth = GitHubAuth.from_settings(github_settings.replace(github_token=None))
    with pytest.raises(NotConfigured):
        await auth.repo_client(github_http)
    auth.configure(token=USER_TOKEN)
    assert auth.mode is AuthMode.TOKEN
    assert await auth.own_login(github_http) == fake_github.user_login
    pem = fake_github.set_app(app_id=55, slug="switched")
    auth.configure(app_id=55, private_key=pem)
    assert (auth.mode, auth.app_id) == (AuthMode.APP, "55")
    assert await auth.own_login(github_http) == "switched[bot]"
    assert auth.actions_token == ACTIONS_TOKEN
    with pytest.raises(ValueError):
        auth.configure(token="x", app_id=1, private_key=pem)
    with pytest.raises(ValueError):
        auth.configure(app_id=1)


async def test_actions_token_is_separate(github_settings, github_http):
    auth = GitHubAuth.from_settings(github_settings)
    assert auth.actions_client(github_http).oauth_token == ACTIONS_TOKEN
    assert (await auth.repo_client(github_http)).oauth_token == USER_TOKEN
    auth.configure(token=USER_TOKEN, actions_token=None)
    with pytest.raises(NotConfigured):
        auth.actions_client(github_http)


async def test_app_holds_the_credentials_object(github_settings, engine):
    app = create_app(github_settings, engine=engine, background=False)
    auth = app[SERVICES]["github_auth"]
    assert isinstance(auth, GitHubAuth)
    assert (auth.mode, auth.base_url) == (AuthMode.TOKEN, github_settings.github_base_url)


async def test_failed_attempts_in_app_mode_are_redacted_and_retried(db, fake_github, app_auth, make_sender, github_clock):
    """Once an installation token is cached, a failing call is still classified, redacted and retried."""
    async with db.begin() as session:
        project = await catalog.create_project(session, "inet", OWNER, REPO)
    sender = make_sender(auth=app_auth)
    await queue(db, status(sha="1" * 40, project_id=project.id))
    await sender.run_once()  # mints and caches a token
    token = fake_github.minted[0]["token"]
    fake_github.fail("POST", r"/repos/.*/statuses/.*", 422, body={"message": f"rejected {token}"})
    await queue(db, status(sha="2" * 40, project_id=project.id))
    await sender.run_once()
    async with db() as session:
        row = (await session.scalars(select(GitHubCall).where(GitHubCall.payload["sha"].as_string() == "2" * 40))).one()
    assert row.state == CallState.FAILED and row.attempts == 1
    assert token not in row.last_error and "rejected" in row.last_error


async def test_reinstalled_app_is_looked_up_again(db, fake_github, app_auth, make_sender, github_clock):
    from tests.plugins.fake_github import drain

    async with db.begin() as session:
        project = await catalog.create_project(session, "inet", OWNER, REPO)
        project.installation_id = 999  # an installation that was removed; the App is now installed as 4242
    await queue(db, status(sha="3" * 40, project_id=project.id))
    await drain(make_sender(auth=app_auth), github_clock)
    assert posted(fake_github, "3" * 40) == [("opp_ci/smoke", "pending")]
    assert [m["installation_id"] for m in fake_github.minted] == [INSTALLATION]
    async with db() as session:
        assert (await session.get(Project, project.id)).installation_id == INSTALLATION
