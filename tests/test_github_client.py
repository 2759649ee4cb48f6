"""The GitHub client's calls, one by one, against the fake GitHub."""

import gidgethub
import pytest

from opp_ci_app.github.auth import GitHubAuth
from opp_ci_app.github.client import CommentAction, GitHubClient, body_sha256, pr_comment_marker
from opp_ci_app.models import RunStatus
from tests.plugins.fake_github import USER_TOKEN

OWNER, REPO, SHA = "inet-framework", "inet", "f" * 40
MARKER = pr_comment_marker("inet")


@pytest.fixture
async def gh(fake_github, github_http) -> GitHubClient:
    return GitHubClient(github_http, base_url=fake_github.url, oauth_token=USER_TOKEN)


async def test_every_request_pins_the_api_version(fake_github, gh):
    await gh.set_status_pending(OWNER, REPO, SHA, context="opp_ci/smoke")
    await gh.get_commit(OWNER, REPO, "master")
    assert {c.headers["x-github-api-version"] for c in fake_github.calls} == {"2022-11-28"}
    assert {c.headers["user-agent"] for c in fake_github.calls} == {"opp_ci"}


async def test_status_description_is_cut_to_140(fake_github, gh):
    await gh.create_commit_status(
        OWNER, REPO, SHA, "failure", context="opp_ci/inet-full", description="x" * 300, target_url="http://ci/1"
    )
    [status] = fake_github.statuses(OWNER, REPO, SHA)
    assert len(status["description"]) == 140 and status["description"].endswith("…")
    assert (status["state"], status["context"], status["target_url"]) == ("failure", "opp_ci/inet-full", "http://ci/1")


async def test_status_from_run_statuses(fake_github, gh):
    await gh.set_status_from_run(
        OWNER, REPO, SHA, context="opp_ci/smoke", run_statuses=[RunStatus.PASSED, RunStatus.FAILED]
    )
    await gh.set_status_pending(OWNER, REPO, SHA, context="opp_ci/other", target_url="http://ci/2")
    assert [(s["state"], s["description"]) for s in fake_github.statuses(OWNER, REPO, SHA)] == [
        ("failure", "1 failed, 1 passed of 2"),
        ("pending", "queued"),
    ]


async def test_reads_are_conditional_through_the_cache(fake_github, github_settings, github_http):
    fake_github.set_pr(OWNER, REPO, 9, head_sha=SHA)
    auth = GitHubAuth.from_settings(github_settings)
    first = await (await auth.repo_client(github_http)).get_pr(OWNER, REPO, 9)
    again = await (await auth.repo_client(github_http)).get_pr(OWNER, REPO, 9)
    assert first == again and first["head"]["sha"] == SHA
    calls = fake_github.requests("GET", rf"/repos/{OWNER}/{REPO}/pulls/9")
    assert [c.status for c in calls] == [200, 304]
    assert "if-none-match" not in calls[0].headers and calls[1].headers["if-none-match"].startswith('"')


async def test_get_commit_and_repo(fake_github, gh):
    fake_github.set_repo(OWNER, REPO, default_branch="main")
    assert (await gh.get_commit(OWNER, REPO, SHA))["sha"] == SHA
    assert await gh.default_branch(OWNER, REPO) == "main"


async def test_missing_pr_raises_bad_request(gh):
    with pytest.raises(gidgethub.BadRequest) as info:
        await gh.get_pr(OWNER, REPO, 404)
    assert info.value.status_code == 404


async def test_dispatch_workflow_accepts_204_and_200(fake_github, gh):
    await gh.dispatch_workflow(OWNER, REPO, "ci-notes.yml", "master")
    fake_github.fail("POST", r"/repos/.*/dispatches", 200, body={"workflow_run_id": 5})
    await gh.dispatch_workflow(OWNER, REPO, "ci-notes.yml", "master", inputs={"why": "notes"})
    assert [body for _w, body, _t in fake_github.dispatches(OWNER, REPO)] == [{"ref": "master"}]
    assert fake_github.requests("POST", r".*/dispatches")[1].json == {"ref": "master", "inputs": {"why": "notes"}}


async def test_sticky_comment_create_update_unchanged(fake_github, gh):
    login = fake_github.user_login
    made = await gh.update_or_create_pr_comment(OWNER, REPO, 3, "first", marker=MARKER, login=login)
    assert made.action is CommentAction.CREATED
    [c] = fake_github.comments(OWNER, REPO, 3)
    assert c["body"] == f"{MARKER}\nfirst"
    same = await gh.update_or_create_pr_comment(
        OWNER, REPO, 3, f"{MARKER}\nfirst", marker=MARKER, login=login,
        comment_id=made.comment_id, known_sha256=made.body_sha256,
    )
    assert (same.action, same.comment_id) == (CommentAction.UNCHANGED, made.comment_id)
    changed = await gh.update_or_create_pr_comment(
        OWNER, REPO, 3, f"{MARKER}\nsecond", marker=MARKER, login=login,
        comment_id=made.comment_id, known_sha256=made.body_sha256,
    )
    assert changed.action is CommentAction.UPDATED
    assert changed.body_sha256 == body_sha256(f"{MARKER}\nsecond")
    assert [c["body"] for c in fake_github.comments(OWNER, REPO, 3)] == [f"{MARKER}\nsecond"]
    assert len(fake_github.requests("PATCH", r".*")) == 1


async def test_search_ignores_other_authors_and_other_projects(fake_github, gh):
    fake_github.add_comment(OWNER, REPO, 3, f"{MARKER}\nby someone else", "mallory")
    fake_github.add_comment(OWNER, REPO, 3, f"{pr_comment_marker('omnetpp')}\nother project", fake_github.user_login)
    assert await gh.find_own_comment(OWNER, REPO, 3, MARKER, fake_github.user_login) is None
    mine = fake_github.add_comment(OWNER, REPO, 3, f"{MARKER}\nmine", fake_github.user_login.upper())
    found = await gh.find_own_comment(OWNER, REPO, 3, MARKER, fake_github.user_login)
    assert found["id"] == mine["id"]


async def test_comment_we_may_not_edit_is_left_alone_and_ours_created(fake_github, gh):
    other = fake_github.add_comment(OWNER, REPO, 3, "theirs", "mallory")
    result = await gh.update_or_create_pr_comment(
        OWNER, REPO, 3, "x", marker=MARKER, login=fake_github.user_login, comment_id=other["id"]
    )
    assert [c["body"] for c in fake_github.comments(OWNER, REPO, 3)] == ["theirs", f"{MARKER}\nx"]
    assert result.comment_id != other["id"]


