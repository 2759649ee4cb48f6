"""`POST /api/github/webhook` end to end: real payloads, matching, superseding, duplicates, bad input."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
import uuid

import pytest
from sqlalchemy import func, select, update

from opp_ci_app import catalog
from opp_ci_app.models import (
    AutoTestRule,
    CallState,
    GitHubCall,
    Installation,
    Project,
    RunStatus,
    TestMatrixRun,
    TestRun,
    WebhookDelivery,
)
from tests.webhooks import WEBHOOK, deliver, headers, payload, payload_names, pr_payload, push_payload, sign

FULL = {"axes": {"kind": ["smoke", "fingerprint"], "mode": ["release", "debug"]}, "exclude": [{"kind": "smoke", "mode": "debug"}]}
FULL_LABELS = ["smoke/release", "fingerprint/release", "fingerprint/debug"]
SHA_A, SHA_B, SHA_C = "a" * 40, "b" * 40, "c" * 40
ZEN = "Anything added dilutes everything else."


@pytest.fixture
async def hello(db):
    """The repositories of the real payloads as projects; Codertocat/Hello-World has rules of each type."""
    async with db.begin() as s:
        await catalog.create_project(s, "hello", "Codertocat", "Hello-World")
        await catalog.create_project(s, "octocoders", "Octocoders", "Hello-World")
        await catalog.create_project(s, "octocat", "octocat", "Hello-World")
        await catalog.create_project(s, "space", "Codertocat", "Space")
        await catalog.create_matrix(s, "hello", "hello-full", FULL)
        await catalog.create_rule(s, "hello", "branch", "master", "hello-full")
        await catalog.create_rule(s, "hello", "tag", "simple-*")
        await catalog.create_rule(s, "hello", "pr", "*", "hello-full")


@pytest.fixture
async def inet(db):
    """inet-framework/inet with the rules of the documentation's examples."""
    async with db.begin() as s:
        await catalog.create_project(s, "inet", "inet-framework", "inet")
        await catalog.create_matrix(s, "inet", "inet-full", FULL)
        await catalog.create_matrix(s, "inet", "inet-release", {"axes": {"kind": ["smoke"], "mode": ["release"]}})
        rules = {
            "master": await catalog.create_rule(s, "inet", "branch", "master", "inet-full"),
            "topic": await catalog.create_rule(s, "inet", "branch", "topic/*"),
            "v6": await catalog.create_rule(s, "inet", "tag", "v6.*", "inet-full"),
            "release-branch": await catalog.create_rule(s, "inet", "branch", "release-4.1", "inet-release"),
            "release-tag": await catalog.create_rule(s, "inet", "tag", "release-4.1"),
            "pr": await catalog.create_rule(s, "inet", "pr", "*"),
        }
        return {name: rule.id for name, rule in rules.items()}


async def snapshot(db) -> dict:
    """Row counts of everything a delivery may touch, and the run statuses."""
    async with db() as s:
        counts = {m.__tablename__: await s.scalar(select(func.count()).select_from(m))
                  for m in (WebhookDelivery, TestMatrixRun, TestRun, GitHubCall, Installation)}
        counts["statuses"] = sorted((await s.execute(select(TestRun.id, TestRun.status))).all())
        counts["installation_ids"] = sorted((await s.execute(select(Project.id, Project.installation_id))).all())
        return counts


async def matrix_runs(db, ids=None) -> list[TestMatrixRun]:
    async with db() as s:
        query = select(TestMatrixRun).order_by(TestMatrixRun.id)
        if ids is not None:
            query = query.where(TestMatrixRun.id.in_(ids))
        return list(await s.scalars(query))


async def run_statuses(db, matrix_run_id) -> list[RunStatus]:
    async with db() as s:
        return list(await s.scalars(select(TestRun.status).where(TestRun.matrix_run_id == matrix_run_id).order_by(TestRun.id)))


async def pending_calls(db, kind: str = "status") -> list[GitHubCall]:
    async with db() as s:
        return list(await s.scalars(
            select(GitHubCall).where(GitHubCall.state == CallState.PENDING, GitHubCall.kind == kind).order_by(GitHubCall.id)
        ))


# Every real payload, sent signed through HTTP to a project owning its repository.

CONFORMANCE = {
    "installation.created.1": {"runs_queued": 0, "installation": 957387, "repositories": ["Codertocat/Hello-World"]},
    "installation.deleted.0": {"runs_queued": 0, "installation": 2},
    "installation_repositories.added.0": {"runs_queued": 0, "installation": 957387, "repositories": ["Codertocat/Space"]},
    "ping.plain.0": {"runs_queued": 0, "zen": ZEN, "hook_id": 109948940},
    "ping.plain.3": {"runs_queued": 0, "zen": ZEN, "hook_id": 109948940},
    "pull_request.closed.3": {"runs_queued": 0, "ignored": "pull request #2 was closed; queued runs of 0 matrix run(s) cancelled"},
    "pull_request.labeled.8": {"runs_queued": 0, "ignored": "pull_request action 'labeled' is not handled"},
    "pull_request.opened.0": {"runs_queued": 3},
    "pull_request.ready_for_review.15": {"runs_queued": 0, "ignored": "pull_request action 'ready_for_review' is not handled"},
    "pull_request.synchronize.22": {"runs_queued": 3},
    "push.branch-created.4": {"runs_queued": 3},
    "push.tag-created.0": {"runs_queued": 1},
    "push.tag-deleted.1": {"runs_queued": 0, "ignored": "tag 'simple-tag' was deleted; queued runs of 0 matrix run(s) cancelled"},
}


def test_every_conformance_payload_has_an_expected_outcome():
    assert sorted(CONFORMANCE) == payload_names()


@pytest.mark.parametrize("name", sorted(CONFORMANCE))
async def test_real_payload(client, db, hello, name):
    event = name.split(".")[0]
    data = payload(name)
    guid = str(uuid.uuid4())
    status, body = await deliver(client, event, data, guid)
    assert status == 200, body
    expected = CONFORMANCE[name]
    assert {k: body.get(k) for k in expected} == expected
    assert body["delivery"] == guid and body["event"] == event
    assert len(body["matrix_runs"]) == (1 if expected["runs_queued"] else 0)
    assert ("ignored" in body) == ("ignored" in expected)
    async with db() as s:
        row = await s.scalar(select(WebhookDelivery).where(WebhookDelivery.guid == guid))
        total_runs = await s.scalar(select(func.count()).select_from(TestRun))
    assert row.event == event and row.action == data.get("action")
    assert row.runs_queued == expected["runs_queued"] == total_runs
    assert row.matrix_run_ids == body["matrix_runs"]
    assert row.repository == (data.get("repository") or {}).get("full_name")
    if expected["runs_queued"]:
        (matrix_run,) = await matrix_runs(db)
        assert row.project_id == matrix_run.project_id
        if event == "push":
            assert matrix_run.github_commit_sha == data["after"]
            assert matrix_run.git_ref == data["ref"].split("/", 2)[2]
            assert matrix_run.trigger == ("tag" if "/tags/" in data["ref"] else "push")
            assert matrix_run.github_pr_number is None
        else:
            assert matrix_run.github_commit_sha == data["pull_request"]["head"]["sha"]
            assert matrix_run.git_ref == data["pull_request"]["head"]["ref"] == "changes"
            assert (matrix_run.trigger, matrix_run.github_pr_number) == ("pull_request", 2)
        assert (matrix_run.github_owner, matrix_run.github_repo) == ("Codertocat", "Hello-World")
        assert matrix_run.github_status_url == f"https://api.github.com/repos/Codertocat/Hello-World/statuses/{matrix_run.github_commit_sha}"
        assert await run_statuses(db, matrix_run.id) == [RunStatus.QUEUED] * expected["runs_queued"]


async def test_real_push_statuses_and_event_time(client, db, hello, settings):
    status, body = await deliver(client, "push", payload("push.branch-created.4"))
    assert status == 200 and body["runs_queued"] == 3
    (matrix_run,) = await matrix_runs(db)
    assert matrix_run.matrix_name == "hello-full" and matrix_run.event_at.isoformat() == "2019-05-15T15:19:25+00:00"
    async with db() as s:
        runs = list(await s.scalars(select(TestRun).where(TestRun.matrix_run_id == matrix_run.id).order_by(TestRun.id)))
        project = await s.scalar(select(Project).where(Project.name == "hello"))
    assert [r.label for r in runs] == FULL_LABELS
    assert [r.cell for r in runs] == [{"kind": "smoke", "mode": "release"}, {"kind": "fingerprint", "mode": "release"},
                                      {"kind": "fingerprint", "mode": "debug"}]
    assert {(r.created_at, r.status, r.reclaims, r.git_ref, r.github_commit_sha, r.github_status_url) for r in runs} == {
        (matrix_run.created_at, RunStatus.QUEUED, 0, "master", matrix_run.github_commit_sha, matrix_run.github_status_url)}
    assert matrix_run.created_at.tzinfo is not None
    assert project.installation_id == 1  # from the delivery's installation
    (call,) = await pending_calls(db)
    assert call.kind == "status" and call.matrix_run_id == matrix_run.id
    assert call.payload == {
        "sha": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "state": "pending",
        "description": "0/3 done",
        "context": "opp_ci/hello-full",
        "target_url": f"http://ci.example.test/matrix-runs/{matrix_run.id}",
    }


async def test_real_pr_opened_then_closed_cancels_its_queued_runs(client, db, hello):
    _, opened = await deliver(client, "pull_request", payload("pull_request.opened.0"))
    status, closed = await deliver(client, "pull_request", payload("pull_request.closed.3"))
    assert status == 200 and closed["runs_queued"] == 0
    assert closed["cancelled_matrix_runs"] == opened["matrix_runs"]
    assert closed["ignored"] == "pull request #2 was closed; queued runs of 1 matrix run(s) cancelled"
    assert await run_statuses(db, opened["matrix_runs"][0]) == [RunStatus.CANCELLED] * 3
    (call,) = await pending_calls(db)
    assert (call.payload["state"], call.payload["description"]) == ("error", "3 cancelled of 3")
    (matrix_run,) = await matrix_runs(db)
    assert matrix_run.finished_at is not None


async def test_real_installation_events_keep_projects_installation_id(client, db, hello):
    async with db.begin() as s:
        await s.execute(update(Project).where(Project.name == "octocat").values(installation_id=2))
    await deliver(client, "installation", payload("installation.created.1"))
    await deliver(client, "installation_repositories", payload("installation_repositories.added.0"))
    await deliver(client, "installation", payload("installation.deleted.0"))
    async with db() as s:
        ids = dict((await s.execute(select(Project.name, Project.installation_id))).all())
        installations = {i.id: i for i in await s.scalars(select(Installation))}
    assert ids == {"hello": 957387, "space": 957387, "octocat": None, "octocoders": None}
    assert installations[957387].account_login == "Codertocat"
    assert installations[957387].repositories == ["Codertocat/Hello-World", "Codertocat/Space"]
    assert installations[957387].deleted_at is None
    assert installations[2].deleted_at is not None and installations[2].repositories == []


async def test_installation_repositories_removed_releases_the_project(client, db, hello):
    await deliver(client, "installation", payload("installation.created.1"))
    data = payload("installation_repositories.added.0")
    data.update(action="removed", repositories_added=[], repositories_removed=[{"full_name": "Codertocat/Hello-World"}])
    status, body = await deliver(client, "installation_repositories", data)
    assert status == 200 and body["repositories"] == []
    async with db() as s:
        assert await s.scalar(select(Project.installation_id).where(Project.name == "hello")) is None


async def test_installation_suspend_and_unsuspend(client, db, hello):
    await deliver(client, "installation", payload("installation.created.1"))
    data = payload("installation.created.1")
    for action, suspended in (("suspend", True), ("unsuspend", False)):
        data["action"] = action
        assert (await deliver(client, "installation", data))[0] == 200
        async with db() as s:
            assert (await s.get(Installation, 957387)).suspended is suspended


# Hand-made payloads: the matching rules.


async def test_branch_pattern_star_crosses_slashes(client, db, inet):
    status, body = await deliver(client, "push", push_payload("refs/heads/topic/a/b"))
    assert status == 200 and body["runs_queued"] == 1
    (matrix_run,) = await matrix_runs(db)
    assert (matrix_run.git_ref, matrix_run.matrix_name, matrix_run.rule_id) == ("topic/a/b", "smoke", inet["topic"])


async def test_tag_pattern_and_tags_never_match_branch_rules(client, db, inet):
    status, body = await deliver(client, "push", push_payload("refs/tags/v6.1.0"))
    assert status == 200 and body["runs_queued"] == 3
    (matrix_run,) = await matrix_runs(db)
    assert (matrix_run.trigger, matrix_run.git_ref, matrix_run.rule_id) == ("tag", "v6.1.0", inet["v6"])
    status, body = await deliver(client, "push", push_payload("refs/heads/v6.1.0", SHA_B))
    assert body == {"delivery": body["delivery"], "event": "push", "matrix_runs": [], "runs_queued": 0,
                    "ignored": "no enabled branch rule matches 'v6.1.0'"}
    status, body = await deliver(client, "push", push_payload("refs/tags/master", SHA_C))
    assert body["runs_queued"] == 0 and body["ignored"] == "no enabled tag rule matches 'master'"


async def test_branch_and_tag_with_the_same_name(client, db, inet):
    _, branch = await deliver(client, "push", push_payload("refs/heads/release-4.1", SHA_A))
    _, tag = await deliver(client, "push", push_payload("refs/tags/release-4.1", SHA_B))
    by_id = {m.id: m for m in await matrix_runs(db)}
    (b,), (t,) = [by_id[i] for i in branch["matrix_runs"]], [by_id[i] for i in tag["matrix_runs"]]
    assert (b.trigger, b.matrix_name, b.rule_id, b.github_commit_sha) == ("push", "inet-release", inet["release-branch"], SHA_A)
    assert (t.trigger, t.matrix_name, t.rule_id, t.github_commit_sha) == ("tag", "smoke", inet["release-tag"], SHA_B)
    # The tag did not supersede the branch: different refs.
    assert await run_statuses(db, b.id) == [RunStatus.QUEUED]


async def test_fork_pr_with_null_head_repo(client, db, inet):
    status, body = await deliver(client, "pull_request", pr_payload("opened", 12, "patch-1", fork=True))
    assert status == 200 and body["runs_queued"] == 1
    (matrix_run,) = await matrix_runs(db)
    assert (matrix_run.github_pr_number, matrix_run.git_ref, matrix_run.github_owner) == (12, "patch-1", "inet-framework")
    (status_call,) = await pending_calls(db)
    assert status_call.payload["state"] == "pending" and status_call.payload["sha"] == SHA_B
    (comment,) = await pending_calls(db, "pr_comment")
    assert comment.payload["pr_number"] == 12 and comment.payload["body"].startswith("<!-- opp_ci:pr-comment:inet -->")


@pytest.mark.parametrize("message", ["Docs [skip ci]", "[CI SKIP] typo", "wip\n\n[no ci]", "[Skip Opp_CI]"])
async def test_skip_ci_markers_queue_nothing(client, db, inet, message):
    status, body = await deliver(client, "push", push_payload("refs/heads/master", message=message))
    assert status == 200 and body["runs_queued"] == 0 and body["matrix_runs"] == []
    assert body["ignored"].startswith("the head commit message says [")
    assert (await snapshot(db))["test_runs"] == 0


async def test_push_with_null_head_commit_still_queues(client, db, inet):
    data = push_payload("refs/heads/master")
    data["head_commit"] = None
    status, body = await deliver(client, "push", data)
    assert status == 200 and body["runs_queued"] == 3


async def test_repository_without_project_is_ignored_but_recorded(client, db, inet):
    status, body = await deliver(client, "push", push_payload("refs/heads/master", owner="someone", repo="else"))
    assert status == 200 and body["ignored"] == "no project for repository someone/else" and body["runs_queued"] == 0
    async with db() as s:
        row = await s.scalar(select(WebhookDelivery))
    assert (row.repository, row.project_id, row.ignored) == ("someone/else", None, body["ignored"])


async def test_project_found_regardless_of_letter_case(client, db, inet):
    status, body = await deliver(client, "push", push_payload("refs/heads/master", owner="INET-Framework", repo="INET"))
    assert status == 200 and body["runs_queued"] == 3
    (matrix_run,) = await matrix_runs(db)
    assert (matrix_run.github_owner, matrix_run.github_repo) == ("inet-framework", "inet")


async def test_pattern_matching_is_case_sensitive(client, db, inet):
    _, body = await deliver(client, "push", push_payload("refs/heads/Master"))
    assert body["runs_queued"] == 0


async def test_two_rules_naming_one_matrix_make_one_matrix_run(client, db, inet):
    async with db.begin() as s:
        await catalog.create_rule(s, "inet", "branch", "m*", "inet-full")
    _, body = await deliver(client, "push", push_payload("refs/heads/master"))
    assert len(body["matrix_runs"]) == 1 and body["runs_queued"] == 3


async def test_rule_changes_apply_to_the_next_delivery(client, db, inet):
    _, body = await deliver(client, "push", push_payload("refs/heads/feature"))
    assert body["runs_queued"] == 0
    async with db.begin() as s:
        rule = await catalog.create_rule(s, "inet", "branch", "feat*", "inet-full")
    _, body = await deliver(client, "push", push_payload("refs/heads/feature", SHA_B))
    assert body["runs_queued"] == 3
    async with db.begin() as s:
        await catalog.set_rule_enabled(s, rule.id, False)
    _, body = await deliver(client, "push", push_payload("refs/heads/feature", SHA_C))
    assert body["runs_queued"] == 0 and body["ignored"] == "no enabled branch rule matches 'feature'"
    async with db.begin() as s:
        await s.execute(update(AutoTestRule).where(AutoTestRule.id == rule.id).values(enabled=True, pattern="feature"))
    _, body = await deliver(client, "push", push_payload("refs/heads/feature", "d" * 40))
    assert body["runs_queued"] == 3


async def test_ref_that_is_neither_branch_nor_tag(client, db, inet):
    _, body = await deliver(client, "push", push_payload("refs/notes/ci"))
    assert body["ignored"] == "ref 'refs/notes/ci' is neither a branch nor a tag"


@pytest.mark.parametrize(("event", "data", "ignored"), [
    ("issues", {"action": "opened", "repository": {"name": "inet", "owner": {"login": "inet-framework"}}}, "issues action 'opened' is not handled"),
    ("check_suite", {"repository": None}, "event 'check_suite' is not handled"),
    ("pull_request", pr_payload("edited"), "pull_request action 'edited' is not handled"),
])
async def test_other_events_and_actions_are_ignored(client, db, inet, event, data, ignored):
    status, body = await deliver(client, event, data)
    assert status == 200 and body["ignored"] == ignored and body["runs_queued"] == 0


# Superseding, deleted branches, closed PRs.


async def test_new_push_supersedes_queued_runs_but_running_ones_finish(client, db, inet):
    _, first = await deliver(client, "push", push_payload("refs/heads/master", SHA_A, timestamp="2026-01-01T10:00:00Z"))
    old = first["matrix_runs"][0]
    async with db.begin() as s:
        running = await s.scalar(select(TestRun.id).where(TestRun.matrix_run_id == old).order_by(TestRun.id).limit(1))
        await s.execute(update(TestRun).where(TestRun.id == running).values(status=RunStatus.RUNNING))
    _, second = await deliver(client, "push", push_payload("refs/heads/master", SHA_B, timestamp="2026-01-01T11:00:00Z"))
    assert second["superseded_matrix_runs"] == [old] and second["runs_queued"] == 3
    assert await run_statuses(db, old) == [RunStatus.RUNNING, RunStatus.CANCELLED, RunStatus.CANCELLED]
    assert await run_statuses(db, second["matrix_runs"][0]) == [RunStatus.QUEUED] * 3
    calls = {c.payload["sha"]: c.payload for c in await pending_calls(db)}
    assert calls[SHA_A]["state"] == "pending" and "2 cancelled" in calls[SHA_A]["description"] and "1 running" in calls[SHA_A]["description"]
    assert calls[SHA_B]["state"] == "pending" and calls[SHA_B]["description"] == "0/3 done"
    (old_run,) = await matrix_runs(db, [old])
    assert old_run.finished_at is None


async def test_superseding_on_the_same_commit_keeps_the_new_pending_status(client, db, inet):
    _, first = await deliver(client, "push", push_payload("refs/heads/master", SHA_A, timestamp="2026-01-01T10:00:00Z"))
    _, second = await deliver(client, "push", push_payload("refs/heads/master", SHA_A, timestamp="2026-01-01T10:00:00Z"))
    assert second["superseded_matrix_runs"] == first["matrix_runs"]
    (call,) = await pending_calls(db)
    assert call.matrix_run_id == second["matrix_runs"][0] and call.payload["state"] == "pending"


async def test_late_older_event_cancels_nothing(client, db, inet):
    _, newer = await deliver(client, "push", push_payload("refs/heads/master", SHA_B, timestamp="2026-01-01T11:00:00Z"))
    _, older = await deliver(client, "push", push_payload("refs/heads/master", SHA_A, timestamp="2026-01-01T10:00:00Z"))
    assert older["runs_queued"] == 3 and "superseded_matrix_runs" not in older
    assert await run_statuses(db, newer["matrix_runs"][0]) == [RunStatus.QUEUED] * 3


async def test_other_branches_and_rules_are_not_superseded(client, db, inet):
    _, master = await deliver(client, "push", push_payload("refs/heads/master", SHA_A))
    _, topic = await deliver(client, "push", push_payload("refs/heads/topic/x", SHA_B))
    assert "superseded_matrix_runs" not in topic
    assert await run_statuses(db, master["matrix_runs"][0]) == [RunStatus.QUEUED] * 3


async def test_pr_synchronize_supersedes_by_pr_number(client, db, inet):
    _, first = await deliver(client, "pull_request", pr_payload("opened", 7, sha=SHA_A, updated_at="2026-01-01T10:00:00Z"))
    _, other = await deliver(client, "pull_request", pr_payload("opened", 8, sha=SHA_C, updated_at="2026-01-01T10:30:00Z"))
    _, second = await deliver(client, "pull_request", pr_payload("synchronize", 7, sha=SHA_B, updated_at="2026-01-01T11:00:00Z"))
    assert second["superseded_matrix_runs"] == first["matrix_runs"]
    assert await run_statuses(db, first["matrix_runs"][0]) == [RunStatus.CANCELLED]
    assert await run_statuses(db, other["matrix_runs"][0]) == [RunStatus.QUEUED]
    (m,) = await matrix_runs(db, second["matrix_runs"])
    assert (m.github_pr_number, m.github_commit_sha, m.trigger) == (7, SHA_B, "pull_request")


async def test_deleted_branch_cancels_its_queued_runs(client, db, inet):
    _, pushed = await deliver(client, "push", push_payload("refs/heads/topic/x", SHA_A))
    _, master = await deliver(client, "push", push_payload("refs/heads/master", SHA_B))
    status, deleted = await deliver(client, "push", push_payload("refs/heads/topic/x", deleted=True))
    assert status == 200 and deleted["runs_queued"] == 0 and deleted["matrix_runs"] == []
    assert deleted["cancelled_matrix_runs"] == pushed["matrix_runs"]
    assert deleted["ignored"] == "branch 'topic/x' was deleted; queued runs of 1 matrix run(s) cancelled"
    assert await run_statuses(db, pushed["matrix_runs"][0]) == [RunStatus.CANCELLED]
    assert await run_statuses(db, master["matrix_runs"][0]) == [RunStatus.QUEUED] * 3


async def test_closed_pr_cancels_only_that_pr(client, db, inet):
    _, seven = await deliver(client, "pull_request", pr_payload("opened", 7))
    _, eight = await deliver(client, "pull_request", pr_payload("opened", 8))
    _, closed = await deliver(client, "pull_request", pr_payload("closed", 7))
    assert closed["cancelled_matrix_runs"] == seven["matrix_runs"]
    assert await run_statuses(db, seven["matrix_runs"][0]) == [RunStatus.CANCELLED]
    assert await run_statuses(db, eight["matrix_runs"][0]) == [RunStatus.QUEUED]


async def one_head_left_queued(db, count: int) -> None:
    async with db() as s:
        rows = (await s.execute(select(TestRun.matrix_run_id, TestRun.status))).all()
    queued = {m for m, status in rows if status == RunStatus.QUEUED}
    assert len(queued) == 1
    assert all(status == RunStatus.CANCELLED for m, status in rows if m not in queued)
    assert len({m for m, _ in rows}) == count


async def test_concurrent_pushes_to_one_branch_leave_one_head_queued(client, db, inet):
    # Same timestamps: none is older than another, so each one processed supersedes the ones before.
    pushes = [push_payload("refs/heads/master", f"{i:040x}") for i in range(10)]
    answers = await asyncio.gather(*(deliver(client, "push", p) for p in pushes))
    assert all(status == 200 and body["runs_queued"] == 3 for status, body in answers)
    await one_head_left_queued(db, 10)


async def test_two_app_processes_on_one_database_supersede_each_other(aiohttp_client, settings, engine, db, inet):
    from opp_ci_app.app import create_app

    clients = [await aiohttp_client(create_app(settings, engine=engine, background=False)) for _ in range(2)]
    pushes = [push_payload("refs/heads/master", f"{i:040x}") for i in range(12)]
    answers = await asyncio.gather(*(deliver(clients[i % 2], "push", p) for i, p in enumerate(pushes)))
    assert all(status == 200 for status, _ in answers)
    await one_head_left_queued(db, 12)


# Duplicates.


async def test_duplicate_guid_changes_nothing(client, db, inet):
    guid = str(uuid.uuid4())
    status, first = await deliver(client, "push", push_payload("refs/heads/master"), guid)
    assert status == 200 and first["runs_queued"] == 3
    before = await snapshot(db)
    status, again = await deliver(client, "push", push_payload("refs/heads/master", SHA_B), guid)
    assert (status, again) == (200, {"duplicate": True})
    assert await snapshot(db) == before


async def test_fifty_concurrent_copies_are_handled_once(client, db, inet):
    guid = str(uuid.uuid4())
    body = json.dumps(push_payload("refs/heads/master")).encode()

    async def post():
        resp = await client.post(WEBHOOK, data=body, headers=headers("push", body, guid))
        return resp.status, await resp.json()

    answers = await asyncio.gather(*(post() for _ in range(50)))
    assert all(status == 200 for status, _ in answers)
    handled = [a for _, a in answers if a != {"duplicate": True}]
    assert len(handled) == 1 and handled[0]["runs_queued"] == 3
    counts = await snapshot(db)
    assert (counts["webhook_deliveries"], counts["test_matrix_runs"], counts["test_runs"]) == (1, 1, 3)


async def test_failed_delivery_is_not_recorded_so_redelivery_works(client, db, inet):
    guid = str(uuid.uuid4())
    broken = push_payload("refs/heads/master")
    broken["after"] = 12345
    status, body = await deliver(client, "push", broken, guid)
    assert status == 400 and body["error"] == "payload field after must be a string"
    assert (await snapshot(db))["webhook_deliveries"] == 0
    status, body = await deliver(client, "push", push_payload("refs/heads/master"), guid)
    assert status == 200 and body["runs_queued"] == 3


async def test_one_bad_delivery_does_not_fail_its_neighbours(client, db, inet):
    good = [push_payload(f"refs/heads/topic/{i}", f"{i:040x}") for i in range(8)]
    bad = push_payload("refs/heads/topic/bad")
    bad["ref"] = ["not", "a", "string"]
    answers = await asyncio.gather(*(deliver(client, "push", p) for p in good[:4] + [bad] + good[4:]))
    assert [status for status, _ in answers] == [200] * 4 + [400] + [200] * 4
    counts = await snapshot(db)
    assert (counts["webhook_deliveries"], counts["test_runs"]) == (8, 8)


# Bad input: a clear 4xx and nothing changes.


async def post_raw(client, body: bytes, hdrs: dict):
    resp = await client.post(WEBHOOK, data=body, headers=hdrs)
    return resp.status, await resp.json()


def ok_headers(body: bytes, **changes):
    hdrs = headers("push", body)
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            hdrs.pop(name)
        else:
            hdrs[name] = value
    return hdrs


PUSH = json.dumps(push_payload("refs/heads/master")).encode()

BAD_REQUESTS = [
    ("missing signature", PUSH, {"X-Hub-Signature-256": None}, 401, "missing X-Hub-Signature-256"),
    ("wrong signature", PUSH, {"X-Hub-Signature-256": sign(b"other")}, 401, "wrong X-Hub-Signature-256"),
    ("sha1 signature only", PUSH, {"X-Hub-Signature-256": None, "X-Hub-Signature": "sha1=" + "0" * 40}, 401, "missing X-Hub-Signature-256"),
    ("signature without prefix", PUSH, {"X-Hub-Signature-256": sign(PUSH)[7:]}, 401, "wrong X-Hub-Signature-256"),
    ("missing event", PUSH, {"X-GitHub-Event": None}, 400, "missing header X-GitHub-Event"),
    ("missing delivery", PUSH, {"X-GitHub-Delivery": None}, 400, "missing header X-GitHub-Delivery"),
    ("text content type", PUSH, {"Content-Type": "text/plain"}, 400, "content type must be one of application/json, application/x-www-form-urlencoded"),
    ("no content type", PUSH, {"Content-Type": ""}, 400, None),
    ("overlong delivery", PUSH, {"X-GitHub-Delivery": "x" * 101}, 400, "X-GitHub-Event or X-GitHub-Delivery is empty or too long"),
]


@pytest.mark.parametrize(("what", "body", "changes", "status", "error"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
async def test_bad_requests(client, db, inet, what, body, changes, status, error):
    before = await snapshot(db)
    got, answer = await post_raw(client, body, ok_headers(body, **{k.replace("-", "_"): v for k, v in changes.items()}))
    assert got == status
    assert set(answer) == {"error"} and (error is None or answer["error"] == error)
    assert await snapshot(db) == before


SIGNED_BUT_BAD = [
    ("not json", b"{not json", "application/json", "the body does not decode as the content type says"),
    ("not utf-8", b"\xff\xfe{}", "application/json", "the body does not decode as the content type says"),
    ("json array", b"[1, 2]", "application/json", "the payload must be a JSON object"),
    ("json string", b'"push"', "application/json", "the payload must be a JSON object"),
    ("empty body", b"", "application/json", "the payload must be a JSON object"),
    ("form without payload", b"other=1", "application/x-www-form-urlencoded", "the body does not decode as the content type says"),
    ("action not a string", json.dumps({"action": {"x": 1}}).encode(), "application/json", "payload field action must be a short string"),
    ("nested too deeply", b"[" * 200_000 + b"]" * 200_000, "application/json", "the body is nested too deeply to decode"),
    ("form nested too deeply", b"payload=" + b"%5B" * 100_000 + b"%5D" * 100_000, "application/x-www-form-urlencoded", "the body is nested too deeply to decode"),
    ("number too long", b'{"action": "opened", "number": ' + b"1" * 5000 + b"}", "application/json", "the body does not decode as the content type says"),
]


@pytest.mark.parametrize(("what", "body", "content_type", "error"), SIGNED_BUT_BAD, ids=[b[0] for b in SIGNED_BUT_BAD])
async def test_signed_bodies_that_do_not_decode(client, db, inet, what, body, content_type, error):
    before = await snapshot(db)
    status, answer = await post_raw(client, body, headers("pull_request", body, content_type=content_type))
    assert (status, answer) == (400, {"error": error})
    assert await snapshot(db) == before


def _set(data, path, value):
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


WRONG_FIELDS = [
    ("push", push_payload("refs/heads/master"), ("ref",), 7, "payload field ref must be a string"),
    ("push", push_payload("refs/heads/master"), ("ref",), None, "payload has no ref"),
    ("push", push_payload("refs/heads/master"), ("repository",), None, "payload has no repository"),
    ("push", push_payload("refs/heads/master"), ("repository",), "inet", "payload field repository must be an object"),
    ("push", push_payload("refs/heads/master"), ("repository", "name"), 5, "payload field repository.name must be a string"),
    ("push", push_payload("refs/heads/master"), ("deleted",), "yes", "payload field deleted must be true or false"),
    ("push", push_payload("refs/heads/master"), ("after",), "", "payload field after is not a commit id (40 or 64 hex digits)"),
    ("push", push_payload("refs/heads/master"), ("after",), "not-a-sha", "payload field after is not a commit id (40 or 64 hex digits)"),
    ("push", push_payload("refs/heads/master"), ("ref",), "refs/heads/a\x00b", "payload field ref contains a NUL character"),
    ("push", push_payload("refs/heads/master"), ("ref",), "refs/heads/a\nb", "payload field ref contains control characters, which git refs cannot"),
    ("push", push_payload("refs/heads/master"), ("repository", "name"), "in\x00et", "payload field repository.name contains a NUL character"),
    ("pull_request", pr_payload("opened"), ("number",), 2**70, "payload field number is out of range"),
    ("pull_request", pr_payload("opened"), ("number",), 2**40, "payload field number is not a pull request number"),
    ("pull_request", pr_payload("opened"), ("number",), 0, "payload field number is not a pull request number"),
    ("push", push_payload("refs/heads/master"), ("head_commit", "message"), ["x"], "payload field head_commit.message must be a string"),
    ("push", push_payload("refs/heads/" + "x" * 300), ("before",), "0", "payload field ref must be 1 to 255 characters"),
    ("pull_request", pr_payload("opened"), ("pull_request",), None, "payload has no pull_request.head.ref"),
    ("pull_request", pr_payload("opened"), ("pull_request", "head"), None, "payload has no pull_request.head.ref"),
    ("pull_request", pr_payload("opened"), ("pull_request", "head", "sha"), 1.5, "payload field pull_request.head.sha must be a string"),
    ("pull_request", pr_payload("opened"), ("number",), True, "payload field number must be an integer"),
    ("pull_request", pr_payload("closed"), ("pull_request", "head", "ref"), {}, "payload field pull_request.head.ref must be a string"),
    ("installation", payload("installation.created.1"), ("installation",), None, "payload has no installation.id"),
    ("installation", payload("installation.created.1"), ("installation", "id"), "957387", "payload field installation.id must be an integer"),
    ("installation", payload("installation.created.1"), ("installation", "id"), 2**70, "payload field installation.id is out of range"),
    ("installation", payload("installation.created.1"), ("repositories",), [1, 2], "payload field repositories[0] must be a repository object"),
    ("installation_repositories", payload("installation_repositories.added.0"), ("repositories_added",), {"a": 1}, "payload field repositories_added must be a list"),
]


@pytest.mark.parametrize(("event", "data", "path", "value", "error"), WRONG_FIELDS, ids=[f"{w[0]}-{'.'.join(w[2])}={w[3]!r}"[:60] for w in WRONG_FIELDS])
async def test_wrong_field_types_are_400_and_change_nothing(client, db, inet, hello, event, data, path, value, error):
    before = await snapshot(db)
    status, answer = await deliver(client, event, _set(json.loads(json.dumps(data)), path, value))
    assert status == 400 and answer["error"] == error
    assert await snapshot(db) == before


async def test_null_installation_and_missing_optional_fields_are_fine(client, db, inet):
    data = pr_payload("opened")
    data["installation"] = None
    del data["pull_request"]["updated_at"]
    del data["number"]
    status, body = await deliver(client, "pull_request", data)
    assert status == 200 and body["runs_queued"] == 1


async def test_body_over_25_mib_is_413(client, db, inet):
    before = await snapshot(db)
    big = b"x" * (25 * 1024 * 1024 + 1)
    resp = await client.post(WEBHOOK, data=big, headers=headers("push", big))
    assert resp.status == 413 and "error" in await resp.json()

    async def chunks():
        for _ in range(30):
            yield b"y" * (1024 * 1024)

    resp = await client.post(WEBHOOK, data=chunks(), headers={"X-GitHub-Event": "push", "X-GitHub-Delivery": "x",
                                                               "X-Hub-Signature-256": "sha256=0", "Content-Type": "application/json"})
    assert resp.status == 413
    assert await snapshot(db) == before


async def test_form_encoded_payload_works_like_json(client, db, inet):
    body = urllib.parse.urlencode({"payload": json.dumps(push_payload("refs/heads/master"))}).encode()
    status, answer = await post_raw(client, body, headers("push", body, content_type="application/x-www-form-urlencoded"))
    assert status == 200 and answer["runs_queued"] == 3


async def test_content_type_with_charset(client, db, inet):
    body = json.dumps(push_payload("refs/heads/master")).encode()
    status, answer = await post_raw(client, body, headers("push", body, content_type="application/json; charset=utf-8"))
    assert status == 200 and answer["runs_queued"] == 3


async def test_ping_without_repository(client, db):
    status, body = await deliver(client, "ping", {"zen": "Keep it logically awesome.", "hook_id": 5})
    assert status == 200
    assert body == {"delivery": body["delivery"], "event": "ping", "matrix_runs": [], "runs_queued": 0,
                    "zen": "Keep it logically awesome.", "hook_id": 5}


async def test_no_secret_configured_refuses_everything(aiohttp_client, settings, engine):
    from opp_ci_app.app import create_app

    app = create_app(settings.replace(webhook_secret=None), engine=engine, background=False)
    client = await aiohttp_client(app)
    status, body = await deliver(client, "ping", {"zen": "z"})
    assert status == 401 and "no webhook secret" in body["error"]


async def test_wrong_signature_is_logged_as_a_warning(client, inet, caplog):
    caplog.set_level(logging.INFO, logger="opp_ci_app.webhook")
    await post_raw(client, PUSH, ok_headers(PUSH, X_Hub_Signature_256=sign(b"other")))
    await post_raw(client, PUSH, ok_headers(PUSH, Content_Type="text/plain"))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "webhook delivery refused: 401 wrong X-Hub-Signature-256"),
        ("INFO", "webhook delivery refused: 400 content type must be one of application/json, application/x-www-form-urlencoded"),
    ]
