"""End to end against the fake GitHub: webhook -> pending -> workers -> final status and one PR comment."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import select

from opp_ci_app import catalog
from opp_ci_app.app import create_app
from opp_ci_app.github.client import pr_comment_marker
from opp_ci_app.github.sender import LEASE, Sender
from opp_ci_app.models import CallState, GitHubCall, Role, utcnow
from opp_ci_app.workers import reap_once
from tests.plugins.fake_github import drain
from tests.test_cli_worker import clean_env, run_worker
from tests.webhooks import deliver, pr_payload, push_payload

OWNER, REPO = "inet-framework", "inet"
PUSH_SHA = "a" * 40
PR_SHA = "b" * 40
EIGHT = {"axes": {"kind": ["smoke", "fingerprint", "statistical", "feature"], "mode": ["release", "debug"]}}
THREE = {"axes": {"kind": ["smoke", "fingerprint"], "mode": ["release", "debug"]}, "exclude": [{"kind": "smoke", "mode": "debug"}]}


@pytest.fixture
async def app_client(aiohttp_client, github_settings, engine):
    return await aiohttp_client(create_app(github_settings, engine=engine, background=False))


@pytest.fixture
def sender(app_client, github_clock) -> Sender:
    return Sender.for_app(app_client.app, clock=github_clock)


@pytest.fixture
async def worker_headers(make_token) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_token(Role.WORKER)}"}


async def set_up_inet(db, rule_type: str, pattern: str, config: dict) -> None:
    async with db.begin() as session:
        await catalog.create_project(session, "inet", OWNER, REPO)
        await catalog.create_matrix(session, "inet", "inet-full", config)
        await catalog.create_rule(session, "inet", rule_type, pattern, "inet-full")


async def claim_all(client, headers, count: int) -> list[dict]:
    jobs = []
    for i in range(count):
        resp = await client.post("/api/workers/poll", json={"worker": f"w{i}"}, headers=headers)
        jobs.append((await resp.json())["job"])
    assert all(jobs)
    return jobs


async def report(client, headers, job: dict, code: str) -> None:
    resp = await client.post(
        "/api/workers/result",
        json={"run_id": job["run_id"], "result_code": code, "test_exec_seconds": 1.5, "worker": job.get("worker")},
        headers=headers,
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["accepted"] is True


def posted(fake_github, sha: str) -> list[tuple[str, str, str]]:
    return [(s["context"], s["state"], s["description"]) for s in fake_github.statuses(OWNER, REPO, sha)]


@pytest.mark.parametrize(
    ("codes", "final"),
    [
        (["PASS", "PASS", "SKIPPED"], ("opp_ci/inet-full", "success", "all 3 passed")),
        (["PASS", "FAIL", "PASS"], ("opp_ci/inet-full", "failure", "1 failed, 2 passed of 3")),
    ],
)
async def test_a_push_shows_pending_then_the_final_state(app_client, db, sender, github_clock, fake_github, worker_headers, codes, final):
    await set_up_inet(db, "branch", "master", THREE)
    status, answer = await deliver(app_client, "push", push_payload("refs/heads/master", PUSH_SHA))
    assert (status, answer["runs_queued"]) == (200, 3)
    await drain(sender, github_clock)
    assert posted(fake_github, PUSH_SHA) == [("opp_ci/inet-full", "pending", "0/3 done")]
    [matrix_run_id] = answer["matrix_runs"]
    assert fake_github.statuses(OWNER, REPO, PUSH_SHA)[0]["target_url"] == f"http://ci.example.test/matrix-runs/{matrix_run_id}"

    jobs = await claim_all(app_client, worker_headers, 3)
    for job, code in zip(jobs, codes):
        await report(app_client, worker_headers, job, code)
    await drain(sender, github_clock)
    # Only the newest state was sent: the intermediate "1/3 done" never reached GitHub.
    assert posted(fake_github, PUSH_SHA) == [("opp_ci/inet-full", "pending", "0/3 done"), final]
    assert fake_github.comments(OWNER, REPO, 7) == []


async def test_a_pr_whose_eight_runs_report_at_once_ends_with_one_comment_holding_the_final_table(
    app_client, db, sender, github_clock, fake_github, worker_headers
):
    await set_up_inet(db, "pr", "*", EIGHT)
    status, answer = await deliver(app_client, "pull_request", pr_payload("opened", 7, sha=PR_SHA))
    assert (status, answer["runs_queued"]) == (200, 8)
    jobs = await claim_all(app_client, worker_headers, 8)
    codes = ["PASS"] * 7 + ["FAIL"]

    async def keep_sending():
        for _ in range(8):
            await sender.run_once()
            await asyncio.sleep(0)

    # Results and the sender race each other; every comment write is serialized per PR.
    await asyncio.gather(*(report(app_client, worker_headers, job, code) for job, code in zip(jobs, codes)), keep_sending())
    await drain(sender, github_clock)

    [comment] = fake_github.comments(OWNER, REPO, 7)
    assert comment["user"]["login"] == fake_github.user_login
    body = comment["body"]
    assert body.startswith(pr_comment_marker("inet") + "\n")
    assert "### ❌ opp_ci: inet — failure" in body
    assert "1 failed, 7 passed of 8 on `bbbbbbb`" in body
    assert body.count("| ✅ passed | 1.5s |") == 7 and body.count("| ❌ failed | 1.5s |") == 1
    assert posted(fake_github, PR_SHA)[-1] == ("opp_ci/inet-full", "failure", "1 failed, 7 passed of 8")
    creates = fake_github.requests("POST", r"/repos/inet-framework/inet/issues/7/comments")
    assert len(creates) == 1


async def test_the_comment_is_edited_in_place_and_follows_a_new_head(app_client, db, sender, github_clock, fake_github, worker_headers):
    await set_up_inet(db, "pr", "*", THREE)
    await deliver(app_client, "pull_request", pr_payload("opened", 7, sha=PR_SHA))
    first, second, third = await claim_all(app_client, worker_headers, 3)
    await report(app_client, worker_headers, first, "PASS")
    await drain(sender, github_clock)
    [comment] = fake_github.comments(OWNER, REPO, 7)
    assert "1/3 done, 2 running" in comment["body"]

    await report(app_client, worker_headers, second, "PASS")
    await report(app_client, worker_headers, third, "PASS")
    await drain(sender, github_clock)
    [comment] = fake_github.comments(OWNER, REPO, 7)
    assert "### ✅ opp_ci: inet — success" in comment["body"]

    new_sha = "c" * 40
    await deliver(app_client, "pull_request", pr_payload("synchronize", 7, sha=new_sha, updated_at="2026-01-01T11:00:00Z"))
    jobs = await claim_all(app_client, worker_headers, 3)
    assert {j["commit_sha"] for j in jobs} == {new_sha}
    for job in jobs:
        await report(app_client, worker_headers, job, "ERROR")
    await drain(sender, github_clock)
    [comment] = fake_github.comments(OWNER, REPO, 7)
    assert "### ⚠️ opp_ci: inet — error" in comment["body"]
    assert "on `ccccccc`" in comment["body"] and "bbbbbbb" not in comment["body"]
    assert len(fake_github.requests("POST", r"/repos/inet-framework/inet/issues/7/comments")) == 1
    assert posted(fake_github, new_sha)[-1] == ("opp_ci/inet-full", "error", "3 errored of 3")


async def test_a_worker_that_dies_loses_nothing(app_client, db, sender, github_clock, fake_github, worker_headers, github_settings):
    """The reaper gives a dead worker's run to another worker; GitHub sees only the true outcome."""
    await set_up_inet(db, "branch", "master", {"axes": {"kind": ["smoke"]}})
    await deliver(app_client, "push", push_payload("refs/heads/master", PUSH_SHA))
    await drain(sender, github_clock)
    [dead] = await claim_all(app_client, worker_headers, 1)
    later = utcnow() + dt.timedelta(seconds=github_settings.worker_lease_seconds + 1)
    assert (await reap_once(db, github_settings, now=later)).requeued == [dead["run_id"]]
    resp = await app_client.post("/api/workers/poll", json={"worker": "alive"}, headers=worker_headers)
    job = (await resp.json())["job"]
    assert job["run_id"] == dead["run_id"]
    await report(app_client, worker_headers, {**job, "worker": "alive"}, "PASS")
    await drain(sender, github_clock)
    # The status queued by the reclaim was replaced by the outcome before it was sent.
    assert posted(fake_github, PUSH_SHA) == [
        ("opp_ci/inet-full", "pending", "0/1 done"),
        ("opp_ci/inet-full", "success", "passed"),
    ]


async def test_an_app_killed_in_the_middle_loses_nothing(
    aiohttp_client, db, github_settings, github_clock, fake_github, worker_headers
):
    """Results reach the database of an app that dies before sending; a new app process sends them."""
    first = await aiohttp_client(create_app(github_settings, background=False))
    await set_up_inet(db, "branch", "master", THREE)
    await deliver(first, "push", push_payload("refs/heads/master", PUSH_SHA))
    jobs = await claim_all(first, worker_headers, 3)
    for job in jobs:
        await report(first, worker_headers, job, "PASS")
    # The first app's sender took the calls and died before it finished (kill -9).
    doomed = Sender.for_app(first.app, clock=github_clock, name="doomed")
    assert await doomed.claim()
    await first.close()

    second = await aiohttp_client(create_app(github_settings, background=False))
    github_clock.advance(LEASE.total_seconds() + 1)
    await drain(Sender.for_app(second.app, clock=github_clock), github_clock)
    assert posted(fake_github, PUSH_SHA) == [("opp_ci/inet-full", "success", "all 3 passed")]
    async with db() as session:
        states = set(await session.scalars(select(GitHubCall.state)))
    assert states <= {CallState.DONE, CallState.SUPERSEDED}


async def test_the_whole_loop_with_opp_ci_worker_command_true(app_client, db, sender, github_clock, fake_github, make_token):
    """What a new user does on one machine: push, `opp_ci worker --command true`, success on the commit."""
    await set_up_inet(db, "branch", "master", THREE)
    await deliver(app_client, "push", push_payload("refs/heads/master", PUSH_SHA))
    url = str(app_client.make_url("")).rstrip("/")
    env = clean_env(OPP_CI_WORKER_TOKEN=await make_token(Role.WORKER))
    for _ in range(3):
        code, out, err = await run_worker("--command", "true", "--url", url, "--once", env=env)
        assert (code, err) == (0, ""), out
        assert ": PASS in " in out
    await drain(sender, github_clock)
    assert posted(fake_github, PUSH_SHA)[-1] == ("opp_ci/inet-full", "success", "all 3 passed")
