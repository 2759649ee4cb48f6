"""The durable queue's sender against the fake GitHub: retries, rate limits, coalescing, leases, sticky comments."""

import asyncio
import dataclasses
import datetime as dt
import logging

import pytest
from sqlalchemy import insert, select

from opp_ci_app import catalog
from opp_ci_app.db import create_engine, sessionmaker
from opp_ci_app.github.auth import GitHubAuth
from opp_ci_app.github.client import COMMENT_MAX, pr_comment_marker
from opp_ci_app.github.queue import Call, CallKind, dispatch_key, enqueue, pr_comment_key, status_key
from opp_ci_app.github.sender import Sender, backoff
from opp_ci_app.models import CallState, GitHubCall, PrComment, utcnow
from tests.plugins.fake_github import ACTIONS_TOKEN, USER_TOKEN, drain

OWNER, REPO = "inet-framework", "inet"
SHA = "1" * 40
MARKER = pr_comment_marker("inet")


def status(sha=SHA, state="pending", context="opp_ci/smoke", description="0/1 done", project_id=None) -> Call:
    return Call(
        kind=CallKind.STATUS,
        coalesce_key=status_key(OWNER, REPO, sha, context),
        github_owner=OWNER,
        github_repo=REPO,
        project_id=project_id,
        payload={
            "sha": sha,
            "state": state,
            "description": description,
            "context": context,
            "target_url": "http://ci.example.test/matrix-runs/1",
        },
    )


def comment(project_id, text, pr_number=7) -> Call:
    return Call(
        kind=CallKind.PR_COMMENT,
        coalesce_key=pr_comment_key(OWNER, REPO, pr_number, project_id),
        github_owner=OWNER,
        github_repo=REPO,
        project_id=project_id,
        payload={"pr_number": pr_number, "project_id": project_id, "project_name": "inet", "body": f"{MARKER}\n{text}"},
    )


def dispatch(ref=None) -> Call:
    return Call(
        kind=CallKind.WORKFLOW_DISPATCH,
        coalesce_key=dispatch_key(OWNER, REPO),
        github_owner=OWNER,
        github_repo=REPO,
        payload={"workflow": "ci-notes.yml", "ref": ref},
    )


async def queue(db, *calls):
    async with db.begin() as session:
        await enqueue(session, list(calls))


async def rows(db):
    async with db() as session:
        return list(await session.scalars(select(GitHubCall).order_by(GitHubCall.id)))


@pytest.fixture
async def project_id(db):
    async with db.begin() as session:
        return (await catalog.create_project(session, "inet", OWNER, REPO)).id


def posted(fake, sha=SHA):
    return [(s["context"], s["state"]) for s in fake.statuses(OWNER, REPO, sha)]


async def test_status_is_sent_once_and_marked_done(db, fake_github, make_sender, github_clock):
    await queue(db, status(state="success", description="passed"))
    sender = make_sender()
    assert await sender.run_once() == 1
    assert await sender.run_once() == 0
    assert posted(fake_github) == [("opp_ci/smoke", "success")]
    [row] = await rows(db)
    assert (row.state, row.attempts, row.lease_owner, row.last_error) == (CallState.DONE, 1, None, None)
    assert row.sent_at == github_clock()
    call = fake_github.requests("POST", rf"/repos/{OWNER}/{REPO}/statuses/{SHA}")[0]
    assert call.token == USER_TOKEN
    assert call.json["description"] == "passed"


async def test_only_newest_status_per_context_is_sent(db, fake_github, make_sender):
    await queue(db, status(state="pending", description="0/2 done"))
    await queue(db, status(state="pending", description="1/2 done"))
    await queue(db, status(state="failure", description="1 failed of 2"), status(context="opp_ci/other"))
    # A duplicate pending row, as two concurrent enqueues on PostgreSQL may leave.
    async with db.begin() as session:
        await session.execute(
            insert(GitHubCall).values(
                kind=CallKind.STATUS, coalesce_key=status_key(OWNER, REPO, SHA, "opp_ci/other"), github_owner=OWNER,
                github_repo=REPO, payload=status(context="opp_ci/other", state="error").payload,
                state=CallState.PENDING, attempts=0, next_attempt_at=utcnow(), created_at=utcnow(),
            )
        )
    await make_sender().run_once()
    assert sorted(posted(fake_github)) == [("opp_ci/other", "error"), ("opp_ci/smoke", "failure")]
    assert [r.state for r in await rows(db)] == [
        CallState.SUPERSEDED, CallState.SUPERSEDED, CallState.DONE, CallState.SUPERSEDED, CallState.DONE,
    ]


async def test_github_down_then_back_delivers_every_final_status_once(db, fake_github, make_sender, github_clock):
    shas = [f"{i:040x}" for i in range(5)]
    await queue(db, *(status(sha=s) for s in shas))
    fake_github.fail("POST", r"/repos/.*/statuses/.*", 503, times=12)
    sender = make_sender()
    await sender.run_once()
    waiting = await rows(db)
    assert {r.state for r in waiting} == {CallState.PENDING}
    assert all(r.next_attempt_at > github_clock() for r in waiting)
    assert waiting[0].last_error == "GitHub answered 503: scripted failure 503"
    # While GitHub is down, results keep arriving: only the final state of each must land.
    await queue(db, *(status(sha=s, state="success", description="passed") for s in shas))
    await drain(sender, github_clock)
    for sha in shas:
        assert posted(fake_github, sha) == [("opp_ci/smoke", "success")]
    assert all(r.state in (CallState.DONE, CallState.SUPERSEDED) for r in await rows(db))


def test_backoff_grows_with_jitter_and_is_capped():
    assert 1.0 <= backoff(0, lambda: 0.0) <= backoff(0, lambda: 1.0) == 2.0
    assert backoff(3, lambda: 1.0) == 16.0
    assert backoff(50, lambda: 1.0) == 15 * 60


@pytest.mark.parametrize(
    "status_code, headers, wait",
    [
        (403, {"retry-after": "120"}, 120),
        (429, {"retry-after": "30"}, 30),
        (429, {}, 60),
        (403, {"x-ratelimit-remaining": "0"}, 600 + 1),
    ],
)
async def test_rate_limits_are_waited_out_without_sleeping(
    db, fake_github, make_sender, github_clock, status_code, headers, wait
):
    if "x-ratelimit-remaining" in headers:
        headers = {**headers, "x-ratelimit-reset": str(int(github_clock.epoch()) + 600)}
    await queue(db, status(sha="a" * 40), status(sha="b" * 40))
    fake_github.fail("POST", r"/repos/.*/statuses/.*", status_code, headers=headers)
    sender = make_sender()
    start = github_clock()
    await sender.run_once()
    # The second call is not even tried: the token waits as a whole.
    assert len(fake_github.requests("POST", r"/repos/.*/statuses/.*")) == 1
    first, second = await rows(db)
    assert first.state == second.state == CallState.PENDING
    assert first.attempts == 1 and second.attempts == 0
    assert abs((first.next_attempt_at - start).total_seconds() - wait) <= 1
    assert second.next_attempt_at == first.next_attempt_at
    github_clock.advance(wait - 2)
    assert await sender.run_once() == 0
    github_clock.advance(3)
    assert await sender.run_once() == 2
    assert len(fake_github.requests("POST", r"/repos/.*/statuses/.*")) == 3


async def test_secondary_limit_403_backs_off_a_minute(db, fake_github, make_sender, github_clock):
    await queue(db, status())
    fake_github.fail(
        "POST", r"/repos/.*/statuses/.*", 403, body={"message": "You have exceeded a secondary rate limit."}
    )
    await make_sender().run_once()
    [row] = await rows(db)
    assert row.state == CallState.PENDING
    assert (row.next_attempt_at - github_clock()).total_seconds() >= 60


async def test_422_is_failed_with_githubs_message_and_not_retried(db, fake_github, make_sender, github_clock, caplog):
    await queue(db, status())
    fake_github.fail(
        "POST",
        r"/repos/.*/statuses/.*",
        422,
        body={"message": "Validation Failed", "errors": [{"resource": "Status", "code": "custom",
                                                          "message": f"No commit found for SHA: {SHA}"}]},
        times=None,
    )
    sender = make_sender()
    with caplog.at_level(logging.ERROR, logger="opp_ci_app.github.sender"):
        await sender.run_once()
    [row] = await rows(db)
    assert row.state == CallState.FAILED
    assert "GitHub answered 422" in row.last_error and f"No commit found for SHA: {SHA}" in row.last_error
    assert f"No commit found for SHA: {SHA}" in caplog.text
    github_clock.advance(86400)
    assert await sender.run_once() == 0
    assert len(fake_github.requests("POST", r"/repos/.*/statuses/.*")) == 1


async def test_permission_denied_403_is_failed(db, fake_github, make_sender):
    await queue(db, status())
    fake_github.fail("POST", r"/repos/.*/statuses/.*", 403, body={"message": "Resource not accessible by integration"})
    await make_sender().run_once()
    [row] = await rows(db)
    assert row.state == CallState.FAILED
    assert row.last_error == "GitHub answered 403: Resource not accessible by integration"


async def test_timeout_is_retried(db, fake_github, make_sender, github_settings, github_clock):
    await queue(db, status(state="success", description="passed"))
    fake_github.fail("POST", r"/repos/.*/statuses/.*", 504, delay=1)
    auth = GitHubAuth.from_settings(github_settings, request_timeout=0.2)
    sender = make_sender(auth=auth)
    await sender.run_once()
    [row] = await rows(db)
    assert (row.state, row.last_error) == (CallState.PENDING, "GitHub did not answer in time")
    await drain(sender, github_clock)
    assert posted(fake_github) == [("opp_ci/smoke", "success")]


async def test_connection_refused_is_retried(db, make_sender, github_settings):
    await queue(db, status())
    sender = make_sender(settings=github_settings.replace(github_base_url="http://127.0.0.1:9"))
    await sender.run_once()
    [row] = await rows(db)
    assert row.state == CallState.PENDING
    assert row.last_error.startswith("cannot reach GitHub")


async def test_superseded_call_is_never_sent(db, fake_github, make_sender):
    await queue(db, status(state="pending"))
    async with db.begin() as session:
        row = (await session.scalars(select(GitHubCall))).one()
        row.state = CallState.SUPERSEDED
    assert await make_sender().run_once() == 0
    assert fake_github.calls == []


async def test_lease_of_a_dead_sender_expires_and_nothing_is_lost(db, fake_github, make_sender, github_clock):
    await queue(db, status(state="success", description="passed"))
    dead = make_sender(name="dead")
    [claimed] = await dead.claim()  # ... and then the process is killed with -9.
    alive = make_sender(name="alive")
    assert await alive.run_once() == 0
    assert fake_github.calls == []
    github_clock.advance(dead.lease.total_seconds() + 1)
    assert await alive.run_once() == 1
    assert posted(fake_github) == [("opp_ci/smoke", "success")]
    # Were the first one to come back late, its word no longer counts.
    async with db.begin() as session:
        assert await dead._finish(claimed, session, state=CallState.FAILED) is False
    [row] = await rows(db)
    assert row.state == CallState.DONE


async def test_newer_call_waits_while_an_older_one_of_its_key_is_being_sent(db, fake_github, make_sender):
    await queue(db, status(state="pending"))
    busy = make_sender(name="busy")
    [claimed] = await busy.claim()
    await queue(db, status(state="success", description="passed"))
    other = make_sender(name="other")
    assert await other.run_once() == 0
    async with db.begin() as session:
        await busy._finish(claimed, session, state=CallState.DONE)
    assert await other.run_once() == 1
    assert posted(fake_github) == [("opp_ci/smoke", "success")]


async def test_two_processes_on_one_database_send_each_call_once(database_url, db, fake_github, make_sender, github_clock):
    shas = [f"{i:040x}" for i in range(40)]
    await queue(db, *(status(sha=s, state="success", description="passed") for s in shas))
    fake_github.fail("POST", r"/repos/.*/statuses/.*", None, delay=0.01, times=None)
    engines = [create_engine(database_url), create_engine(database_url)]
    try:
        senders = [make_sender(name=f"p{i}", batch=5) for i in range(2)]
        for sender, engine in zip(senders, engines):
            sender.sessionmaker = sessionmaker(engine)
        handled = await asyncio.gather(*(s.run_once() for s in senders))
    finally:
        for engine in engines:
            await engine.dispose()
    assert sum(handled) == 40
    for sha in shas:
        assert posted(fake_github, sha) == [("opp_ci/smoke", "success")]
    assert len(fake_github.requests("POST", r"/repos/.*/statuses/.*")) == 40
    assert {r.state for r in await rows(db)} == {CallState.DONE}


async def test_calls_wait_without_credentials_then_go_out(db, fake_github, make_sender, github_settings, caplog):
    await queue(db, status(state="success", description="passed"))
    auth = GitHubAuth.from_settings(github_settings.replace(github_token=None))
    sender = make_sender(auth=auth)
    with caplog.at_level(logging.WARNING):
        assert await sender.run_once() == 0
        assert await sender.run_once() == 0
    assert caplog.text.count("no GitHub credentials") == 1
    auth.configure(token=USER_TOKEN)
    assert await sender.run_once() == 1
    assert posted(fake_github) == [("opp_ci/smoke", "success")]


# -- workflow dispatch ---------------------------------------------------------------------------


async def test_dispatch_uses_only_the_actions_token_on_the_default_branch(db, fake_github, make_sender):
    fake_github.set_repo(OWNER, REPO, default_branch="main")
    await queue(db, dispatch(), status())
    await make_sender().run_once()
    assert fake_github.dispatches(OWNER, REPO) == [("ci-notes.yml", {"ref": "main"}, ACTIONS_TOKEN)]
    used = {(c.method, c.path.split("/")[-1] if "statuses" not in c.path else "statuses"): c.token for c in fake_github.calls}
    assert used == {("GET", REPO): ACTIONS_TOKEN, ("POST", "dispatches"): ACTIONS_TOKEN, ("POST", "statuses"): USER_TOKEN}
    assert {r.state for r in await rows(db)} == {CallState.DONE}


async def test_dispatch_with_a_ref_and_a_200_answer(db, fake_github, make_sender):
    fake_github.fail("POST", r"/repos/.*/dispatches", 200, body={"workflow_run_id": 1})
    await queue(db, dispatch(ref="topic"))
    await make_sender().run_once()
    assert [c.json for c in fake_github.requests("POST", r"/repos/.*/dispatches")] == [{"ref": "topic"}]
    assert fake_github.requests("GET", r"/repos/[^/]+/[^/]+") == []
    [row] = await rows(db)
    assert row.state == CallState.DONE


async def test_dispatch_without_actions_token_is_skipped(db, fake_github, make_sender, github_settings, caplog):
    await queue(db, dispatch())
    sender = make_sender(settings=github_settings.replace(github_actions_token=None))
    with caplog.at_level(logging.WARNING, logger="opp_ci_app.github.sender"):
        assert await sender.run_once() == 1
    [row] = await rows(db)
    assert row.state == CallState.FAILED
    assert "OPP_CI_GITHUB_ACTIONS_TOKEN" in row.last_error
    assert len([r for r in caplog.records if "OPP_CI_GITHUB_ACTIONS_TOKEN" in r.getMessage()]) == 1
    assert fake_github.calls == []


async def test_secrets_never_reach_logs_or_last_error(db, fake_github, make_sender, github_clock, caplog):
    fake_github.fail("POST", r"/repos/.*/statuses/.*", 422, body={"message": f"token {USER_TOKEN} is odd"})
    fake_github.fail("POST", r"/repos/.*/dispatches", 503, body={"message": f"bad {ACTIONS_TOKEN}"})
    await queue(db, status(), dispatch(ref="master"))
    with caplog.at_level(logging.DEBUG):
        await drain(make_sender(), github_clock)
    assert caplog.records
    for secret in (USER_TOKEN, ACTIONS_TOKEN):
        assert secret not in caplog.text
        assert all(secret not in (r.last_error or "") for r in await rows(db))
    assert "[redacted]" in (await rows(db))[0].last_error


# -- the sticky PR comment -----------------------------------------------------------------------


async def remembered(db, project_id, pr_number=7):
    async with db() as session:
        return await session.scalar(
            select(PrComment).where(PrComment.project_id == project_id, PrComment.github_pr_number == pr_number)
        )


async def test_comment_is_created_then_edited_in_place(db, fake_github, make_sender, project_id):
    sender = make_sender()
    await queue(db, comment(project_id, "1/2 done"))
    await sender.run_once()
    [first] = fake_github.comments(OWNER, REPO, 7)
    assert first["body"] == f"{MARKER}\n1/2 done"
    assert first["user"]["login"] == fake_github.user_login
    assert (await remembered(db, project_id)).comment_id == first["id"]
    await queue(db, comment(project_id, "2/2 done"))
    await sender.run_once()
    [second] = fake_github.comments(OWNER, REPO, 7)
    assert (second["id"], second["body"]) == (first["id"], f"{MARKER}\n2/2 done")
    # The remembered id is used: no search through the comments the second time.
    assert len(fake_github.requests("GET", r"/repos/.*/issues/7/comments")) == 1


async def test_unchanged_body_is_not_patched(db, fake_github, make_sender, project_id):
    sender = make_sender()
    await queue(db, comment(project_id, "same"))
    await sender.run_once()
    before = len(fake_github.calls)
    await queue(db, comment(project_id, "same"))
    assert await sender.run_once() == 1
    assert len(fake_github.calls) == before
    assert {r.state for r in await rows(db)} == {CallState.DONE}


async def test_own_comment_is_found_on_a_later_page_and_others_are_ignored(db, fake_github, make_sender, project_id):
    for i in range(120):
        fake_github.add_comment(OWNER, REPO, 7, f"{MARKER}\nfake" if i == 3 else f"chatter {i}", "mallory")
    own = fake_github.add_comment(OWNER, REPO, 7, f"{MARKER}\nold", fake_github.user_login)
    for i in range(10):
        fake_github.add_comment(OWNER, REPO, 7, f"later {i}", "someone")
    await queue(db, comment(project_id, "new"))
    await make_sender().run_once()
    comments = {c["id"]: c for c in fake_github.comments(OWNER, REPO, 7)}
    assert len(comments) == 131
    assert comments[own["id"]]["body"] == f"{MARKER}\nnew"
    assert sum(1 for c in comments.values() if c["body"] == f"{MARKER}\nfake") == 1
    assert fake_github.requests("POST", r"/repos/.*/issues/7/comments") == []
    pages = fake_github.requests("GET", r"/repos/.*/issues/7/comments")
    assert [c.query.get("page", "1") for c in pages] == ["1", "2"]
    assert (await remembered(db, project_id)).comment_id == own["id"]


async def test_found_comment_with_same_body_is_not_patched(db, fake_github, make_sender, project_id):
    fake_github.add_comment(OWNER, REPO, 7, f"{MARKER}\nsame", fake_github.user_login)
    await queue(db, comment(project_id, "same"))
    await make_sender().run_once()
    assert fake_github.requests("PATCH", r".*") == []
    assert fake_github.requests("POST", r".*") == []


async def test_deleted_comment_is_made_again(db, fake_github, make_sender, project_id):
    sender = make_sender()
    await queue(db, comment(project_id, "one"))
    await sender.run_once()
    [gone] = fake_github.comments(OWNER, REPO, 7)
    fake_github._comments.clear()
    await queue(db, comment(project_id, "two"))
    await sender.run_once()
    [again] = fake_github.comments(OWNER, REPO, 7)
    assert again["id"] != gone["id"] and again["body"] == f"{MARKER}\ntwo"
    assert (await remembered(db, project_id)).comment_id == again["id"]


async def test_long_body_is_cut_to_githubs_limit(db, fake_github, make_sender, project_id):
    await queue(db, comment(project_id, "x" * 70000))
    await make_sender().run_once()
    [posted_comment] = fake_github.comments(OWNER, REPO, 7)
    assert len(posted_comment["body"]) == COMMENT_MAX
    assert posted_comment["body"].startswith(MARKER)
    assert posted_comment["body"].endswith("(cut to fit GitHub's limit of 65,536 characters)")


async def test_eight_concurrent_results_make_one_comment(database_url, db, fake_github, make_sender, project_id, github_clock):
    fake_github.fail("POST", r"/repos/.*/issues/7/comments", None, delay=0.05, times=None)
    fake_github.fail("PATCH", r"/repos/.*/issues/comments/\d+", None, delay=0.02, times=None)
    engines = [create_engine(database_url), create_engine(database_url)]
    try:
        senders = [make_sender(name=f"p{i}") for i in range(2)]
        for sender, engine in zip(senders, engines):
            sender.sessionmaker = sessionmaker(engine)

        async def result(i):
            await asyncio.sleep(0.01 * i)
            await queue(db, comment(project_id, f"{i + 1}/8 done"))

        async def keep_sending(sender):
            for _ in range(10):
                await sender.run_once()
                await asyncio.sleep(0.01)

        await asyncio.gather(*(result(i) for i in range(8)), *(keep_sending(s) for s in senders))
        await drain(senders[0], github_clock)
    finally:
        for engine in engines:
            await engine.dispose()
    ours = [c for c in fake_github.comments(OWNER, REPO, 7) if MARKER in c["body"]]
    newest = (await rows(db))[-1]
    assert len(ours) == 1
    assert ours[0]["body"] == newest.payload["body"]
    assert len(fake_github.requests("POST", r"/repos/.*/issues/7/comments")) == 1


async def test_quota_used_up_by_a_success_holds_the_next_calls(db, fake_github, make_sender, github_clock):
    reset = int(github_clock.epoch()) + 300
    fake_github.fail(
        "POST", r"/repos/.*/statuses/.*", None, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
    )
    await queue(db, status(sha="a" * 40), status(sha="b" * 40))
    sender = make_sender()
    await sender.run_once()
    assert len(fake_github.requests("POST", r"/repos/.*/statuses/.*")) == 1
    first, second = await rows(db)
    assert (first.state, second.state, second.attempts) == (CallState.DONE, CallState.PENDING, 0)
    assert second.next_attempt_at.timestamp() == reset
    github_clock.advance(301)
    assert await sender.run_once() == 1
    assert posted(fake_github, "b" * 40) == [("opp_ci/smoke", "pending")]


async def test_app_started_with_background_sends_queued_calls(aiohttp_client, github_settings, engine, db, fake_github):
    from opp_ci_app.app import create_app
    from opp_ci_app.appkeys import SERVICES
    from opp_ci_app.github import sender as sender_module

    app = create_app(github_settings, engine=engine, background=True)
    await aiohttp_client(app)
    await queue(db, status(state="success", description="passed"))
    sender_module.wake(app)
    for _ in range(100):
        if posted(fake_github):
            break
        await asyncio.sleep(0.05)
    assert posted(fake_github) == [("opp_ci/smoke", "success")]
    assert isinstance(app[SERVICES]["sender"], Sender)


KILLED_SENDER = """
import asyncio, sys
import aiohttp
from opp_ci_app.db import create_engine, sessionmaker
from opp_ci_app.github.auth import GitHubAuth
from opp_ci_app.github.sender import Sender

async def main():
    engine = create_engine(sys.argv[1])
    async with aiohttp.ClientSession() as http:
        sender = Sender(sessionmaker(engine), GitHubAuth(sys.argv[2], token=sys.argv[3]), http, name="doomed")
        await sender.run_once()

asyncio.run(main())
"""


async def test_kill_9_while_sending_loses_nothing(database_url, db, fake_github, make_sender, github_clock):
    import os
    import sys
    from pathlib import Path

    await queue(db, status(state="success", description="passed"))
    # GitHub is slow, so the process is in the middle of sending when it is killed.
    fake_github.fail("POST", r"/repos/.*/statuses/.*", 504, delay=60)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_SENDER, database_url, fake_github.url, USER_TOKEN,
        cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        for _ in range(300):
            if fake_github.requests("POST", r"/repos/.*/statuses/.*"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the doomed sender never sent")
    finally:
        proc.kill()
        await proc.wait()
    [row] = await rows(db)
    assert (row.state, row.lease_owner) == (CallState.PENDING, "doomed")
    fake_github.clear_failures()
    sender = make_sender()
    assert await sender.run_once() == 0
    github_clock.now = row.leased_until + dt.timedelta(seconds=1)
    assert await sender.run_once() == 1
    assert posted(fake_github) == [("opp_ci/smoke", "success")]


async def test_claims_racing_for_one_key_yield(db, fake_github, make_sender):
    # What two senders on PostgreSQL can end up with when their snapshots cross: both rows of one key leased.
    await queue(db, status(state="pending"))
    first = make_sender(name="first")
    [older] = await first.claim()
    async with db.begin() as session:
        newer_id = (
            await session.execute(
                insert(GitHubCall).values(
                    kind=CallKind.STATUS, coalesce_key=older.coalesce_key, github_owner=OWNER, github_repo=REPO,
                    payload=status(state="success").payload, state=CallState.PENDING, attempts=0,
                    next_attempt_at=utcnow(), created_at=utcnow(), lease_owner="second",
                    leased_until=utcnow() + dt.timedelta(minutes=3),
                ).returning(GitHubCall.id)
            )
        ).scalar_one()
    second = make_sender(name="second")
    newer = dataclasses.replace(older, id=newer_id)
    assert await first._yield_to_others([older], first.clock()) == []
    assert await second._yield_to_others([newer], second.clock()) == [newer]
    older_row, newer_row = await rows(db)
    assert (older_row.state, older_row.lease_owner) == (CallState.SUPERSEDED, None)
    assert (newer_row.state, newer_row.lease_owner) == (CallState.PENDING, "second")


async def test_comment_of_another_account_is_replaced_by_our_own(db, fake_github, make_sender, project_id):
    """After switching from token mode to App mode, the remembered comment is the old account's: GitHub says 403."""
    old = fake_github.add_comment(OWNER, REPO, 7, f"{MARKER}\nold", "previous-token-user")
    async with db.begin() as session:
        session.add(PrComment(project_id=project_id, github_owner=OWNER, github_repo=REPO, github_pr_number=7,
                              comment_id=old["id"], body_sha256="0" * 64))
    fake_github.fail("PATCH", rf"/repos/{OWNER}/{REPO}/issues/comments/{old['id']}", 403,
                     body={"message": "You must have push access to update this comment."})
    await queue(db, comment(project_id, "two"))
    await make_sender().run_once()
    by_author = {c["user"]["login"]: c["body"] for c in fake_github.comments(OWNER, REPO, 7)}
    assert by_author == {"previous-token-user": f"{MARKER}\nold", fake_github.user_login: f"{MARKER}\ntwo"}
    assert (await remembered(db, project_id)).comment_id != old["id"]


async def test_rate_limited_comment_edit_keeps_the_comment(db, fake_github, make_sender, project_id, github_clock):
    sender = make_sender()
    await queue(db, comment(project_id, "one"))
    await sender.run_once()
    fake_github.fail("PATCH", r"/repos/.*/issues/comments/\d+", 403, headers={"retry-after": "30"})
    await queue(db, comment(project_id, "two"))
    await drain(sender, github_clock)
    assert [c["body"] for c in fake_github.comments(OWNER, REPO, 7)] == [f"{MARKER}\ntwo"]
