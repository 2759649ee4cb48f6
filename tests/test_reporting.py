"""update_github_status: the status queued for each matrix run and the one PR comment per project and PR."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, update

from opp_ci_app.models import GitHubCall, RunStatus, TestMatrixRun, TestRun
from opp_ci_app.reporting import update_github_status
from tests.test_workers import SHA, make_project, pending_calls, queue_matrix_run

R = RunStatus


async def set_statuses(db, run_ids: list[int], statuses: list[RunStatus]) -> None:
    async with db.begin() as session:
        for run_id, status in zip(run_ids, statuses):
            await session.execute(update(TestRun).where(TestRun.id == run_id).values(status=status))


async def report(db, settings, *matrix_run_ids: int) -> None:
    async with db.begin() as session:
        await update_github_status(session, settings, matrix_run_ids)


@pytest.mark.parametrize(
    ("statuses", "state", "description"),
    [
        ([R.PASSED, R.PASSED, R.PASSED], "success", "all 3 passed"),
        ([R.PASSED, R.FAILED, R.ERROR], "failure", "1 failed, 1 errored, 1 passed of 3"),
        ([R.PASSED, R.ERROR, R.PASSED], "error", "1 errored, 2 passed of 3"),
        ([R.CANCELLED, R.PASSED, R.PASSED], "error", "1 cancelled, 2 passed of 3"),
        ([R.FAILED, R.CANCELLED, R.CANCELLED], "failure", "1 failed, 2 cancelled of 3"),
        ([R.PASSED, R.RUNNING, R.QUEUED], "pending", "1/3 done, 1 running"),
        ([R.QUEUED, R.QUEUED, R.QUEUED], "pending", "0/3 done"),
    ],
)
async def test_the_status_of_a_matrix_run_aggregates_its_runs(db, settings, statuses, state, description):
    project_id = await make_project(db)
    matrix_run_id, run_ids = await queue_matrix_run(db, project_id)
    await set_statuses(db, run_ids, statuses)
    await report(db, settings, matrix_run_id)
    [call] = await pending_calls(db, "status")
    assert call.payload == {
        "sha": SHA,
        "state": state,
        "description": description,
        "context": "opp_ci/inet-full",
        "target_url": f"http://ci.example.test/matrix-runs/{matrix_run_id}",
    }
    assert (call.github_owner, call.github_repo, call.matrix_run_id) == ("inet-framework", "inet", matrix_run_id)
    async with db() as session:
        finished_at = (await session.get(TestMatrixRun, matrix_run_id)).finished_at
    assert (finished_at is not None) == (state != "pending")


async def test_descriptions_stay_within_140_characters_for_the_largest_matrix(db, settings):
    project_id = await make_project(db)
    cells = [{"kind": f"k{i}"} for i in range(256)]
    matrix_run_id, run_ids = await queue_matrix_run(db, project_id, cells, matrix_name="m" * 100)
    mix = [R.FAILED, R.ERROR, R.CANCELLED, R.PASSED, R.RUNNING]
    await set_statuses(db, run_ids, [mix[i % len(mix)] for i in range(256)])
    await report(db, settings, matrix_run_id)
    [call] = await pending_calls(db, "status")
    assert call.payload["description"] == "205/256 done, 52 failed, 51 errored, 51 cancelled, 51 running"
    assert len(call.payload["description"]) <= 140
    assert call.payload["context"] == "opp_ci/" + "m" * 100


async def test_a_newer_status_replaces_the_unsent_one(db, settings):
    project_id = await make_project(db)
    matrix_run_id, run_ids = await queue_matrix_run(db, project_id)
    await report(db, settings, matrix_run_id)
    await set_statuses(db, run_ids, [R.PASSED] * 3)
    await report(db, settings, matrix_run_id)
    [call] = await pending_calls(db, "status")
    assert call.payload["state"] == "success"


async def test_a_push_gets_statuses_but_no_pr_comment(db, settings):
    project_id = await make_project(db)
    matrix_run_id, _ = await queue_matrix_run(db, project_id)
    await report(db, settings, matrix_run_id)
    assert await pending_calls(db, "pr_comment") == []


async def test_one_comment_per_project_and_pr_covering_every_matrix_run_of_the_head(db, settings):
    inet = await make_project(db)
    other = await make_project(db, "inet-showcases", "inet-framework", "showcases")
    full, full_runs = await queue_matrix_run(db, inet, pr_number=12, git_ref="topic/x")
    smoke, _ = await queue_matrix_run(db, inet, [{"kind": "smoke"}], matrix_name="smoke", pr_number=12, git_ref="topic/x")
    showcases, _ = await queue_matrix_run(db, other, [{"kind": "smoke"}], matrix_name="showcases", pr_number=12, repo="showcases")
    await set_statuses(db, full_runs, [R.PASSED, R.FAILED, R.RUNNING])
    await report(db, settings, full, smoke, showcases)

    statuses = await pending_calls(db, "status")
    assert sorted(c.payload["context"] for c in statuses) == ["opp_ci/inet-full", "opp_ci/showcases", "opp_ci/smoke"]
    comments = {c.payload["project_name"]: c for c in await pending_calls(db, "pr_comment")}
    assert sorted(comments) == ["inet", "inet-showcases"]
    call = comments["inet"]
    assert (call.github_owner, call.github_repo, call.project_id) == ("inet-framework", "inet", inet)
    assert set(call.payload) == {"pr_number", "project_id", "project_name", "body"}
    assert (call.payload["pr_number"], call.payload["project_id"]) == (12, inet)
    body = call.payload["body"]
    assert body.startswith("<!-- opp_ci:pr-comment:inet -->\n")
    assert f"[opp\\_ci/inet\\-full](http://ci.example.test/matrix-runs/{full})" in body
    assert f"[opp\\_ci/smoke](http://ci.example.test/matrix-runs/{smoke})" in body
    assert "showcases" not in body
    assert body.count("| inet\\-full |") == 3 and body.count("| smoke | smoke |") == 1
    assert comments["inet-showcases"].github_repo == "showcases"
    assert comments["inet-showcases"].payload["body"].startswith("<!-- opp_ci:pr-comment:inet-showcases -->\n")


async def test_only_the_newest_head_of_a_pr_is_in_its_comment(db, settings):
    project_id = await make_project(db)
    t = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
    old, old_runs = await queue_matrix_run(db, project_id, pr_number=12, sha="1" * 40, event_at=t)
    # Delivered later but made earlier: it does not become the head.
    stale, _ = await queue_matrix_run(db, project_id, pr_number=12, sha="0" * 40, event_at=t - dt.timedelta(hours=1))
    new, _ = await queue_matrix_run(db, project_id, [{"kind": "smoke"}], pr_number=12, sha="2" * 40, event_at=t + dt.timedelta(hours=1))

    await set_statuses(db, old_runs, [R.PASSED] * 3)
    await report(db, settings, old, stale)
    assert await pending_calls(db, "pr_comment") == []
    assert len(await pending_calls(db, "status")) == 2  # the old head still gets its final status

    await report(db, settings, new)
    [call] = await pending_calls(db, "pr_comment")
    assert "on `2222222`" in call.payload["body"]
    assert call.payload["body"].count("| inet\\-full | smoke |") == 1
    assert call.matrix_run_id == new


async def test_a_newer_comment_body_replaces_the_unsent_one(db, settings):
    project_id = await make_project(db)
    matrix_run_id, run_ids = await queue_matrix_run(db, project_id, pr_number=3)
    await report(db, settings, matrix_run_id)
    await set_statuses(db, run_ids, [R.PASSED] * 3)
    await report(db, settings, matrix_run_id)
    [call] = await pending_calls(db, "pr_comment")
    assert "### ✅ opp_ci: inet — success" in call.payload["body"]


async def test_notes_dispatch_is_queued_when_the_commits_last_run_finishes(db, settings):
    settings = settings.replace(github_actions_token="ghs_actions")
    project_id = await make_project(db)
    first, first_runs = await queue_matrix_run(db, project_id)
    second, second_runs = await queue_matrix_run(db, project_id, matrix_name="other")
    await set_statuses(db, first_runs, [R.PASSED] * 3)
    await report(db, settings, first)
    assert await pending_calls(db, "workflow_dispatch") == []  # the commit still has queued runs
    await set_statuses(db, second_runs, [R.PASSED, R.FAILED, R.PASSED])
    await report(db, settings, second)
    [call] = await pending_calls(db, "workflow_dispatch")
    assert call.payload == {"workflow": "ci-notes.yml", "ref": None}
    await report(db, settings, second)  # reported again: already finished, no second dispatch
    async with db() as session:
        kinds = list(await session.scalars(select(GitHubCall.kind).where(GitHubCall.kind == "workflow_dispatch")))
    assert kinds == ["workflow_dispatch"]


async def test_nothing_to_update_queues_nothing(db, settings):
    await report(db, settings)
    async with db() as session:
        assert list(await session.scalars(select(TestRun))) == []
    assert await pending_calls(db) == []


async def test_no_notes_dispatch_for_a_commit_whose_runs_were_all_cancelled(db, settings):
    settings = settings.replace(github_actions_token="ghs_actions")
    project_id = await make_project(db)
    matrix_run_id, run_ids = await queue_matrix_run(db, project_id)
    await set_statuses(db, run_ids, [R.CANCELLED] * 3)
    await report(db, settings, matrix_run_id)
    assert await pending_calls(db, "workflow_dispatch") == []
    [status] = await pending_calls(db, "status")
    assert status.payload["state"] == "error"
