"""Worker API: atomic claims, heartbeats, the reaper, and every answer of the result endpoint."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import func, select, update

from opp_ci_app.app import create_app
from opp_ci_app.db import create_engine, sessionmaker
from opp_ci_app.models import CallState, GitHubCall, Project, Role, RunStatus, TestMatrixRun, TestRun, utcnow
from opp_ci_app.workers import MAX_RECLAIMS, OUTPUT_MAX_CHARS, reap_once

SHA = "a" * 40
INET_CELLS = [
    {"kind": "smoke", "mode": "release"},
    {"kind": "fingerprint", "mode": "release"},
    {"kind": "fingerprint", "mode": "debug"},
]


# Helpers shared by the worker, reporting and lifecycle tests.


async def make_project(db, name: str = "inet", owner: str = "inet-framework", repo: str = "inet") -> int:
    async with db.begin() as session:
        project = Project(name=name, github_owner=owner, github_repo=repo)
        session.add(project)
        await session.flush()
        return project.id


async def queue_matrix_run(
    db,
    project_id: int,
    cells: list[dict] = INET_CELLS,
    *,
    matrix_name: str = "inet-full",
    sha: str = SHA,
    git_ref: str = "master",
    pr_number: int | None = None,
    owner: str = "inet-framework",
    repo: str = "inet",
    event_at: dt.datetime | None = None,
) -> tuple[int, list[int]]:
    """A matrix run with one queued run per cell, as the webhook makes them: (matrix run id, run ids)."""
    async with db.begin() as session:
        matrix_run = TestMatrixRun(
            project_id=project_id,
            matrix_name=matrix_name,
            trigger="pull_request" if pr_number is not None else "push",
            git_ref=git_ref,
            github_owner=owner,
            github_repo=repo,
            github_commit_sha=sha,
            github_pr_number=pr_number,
            event_at=event_at,
        )
        session.add(matrix_run)
        await session.flush()
        runs = [
            TestRun(
                matrix_run_id=matrix_run.id,
                project_id=project_id,
                cell=cell,
                label="/".join(str(v) for v in cell.values()),
                git_ref=git_ref,
                github_owner=owner,
                github_repo=repo,
                github_commit_sha=sha,
                github_pr_number=pr_number,
            )
            for cell in cells
        ]
        session.add_all(runs)
        await session.flush()
        return matrix_run.id, [r.id for r in runs]


async def get_run(db, run_id: int) -> TestRun:
    async with db() as session:
        return await session.get(TestRun, run_id)


async def pending_calls(db, kind: str | None = None) -> list[GitHubCall]:
    """The queued GitHub calls still to send, oldest first."""
    query = select(GitHubCall).where(GitHubCall.state == CallState.PENDING).order_by(GitHubCall.id)
    if kind is not None:
        query = query.where(GitHubCall.kind == kind)
    async with db() as session:
        return list(await session.scalars(query))


async def count_calls(db) -> int:
    async with db() as session:
        return await session.scalar(select(func.count()).select_from(GitHubCall))


@pytest.fixture
async def worker_headers(make_token) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_token(Role.WORKER)}"}


async def poll(client, headers, worker="w1"):
    resp = await client.post("/api/workers/poll", json={"worker": worker}, headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def report(client, headers, run_id, result_code="PASS", **fields):
    return await client.post(
        "/api/workers/result", json={"run_id": run_id, "result_code": result_code, **fields}, headers=headers
    )


# Poll


async def test_poll_gives_the_oldest_queued_run_with_everything_a_worker_needs(client, db, worker_headers):
    project_id = await make_project(db)
    _mr, run_ids = await queue_matrix_run(db, project_id, pr_number=7, git_ref="topic/x")
    answer = await poll(client, worker_headers, "builder-1")
    assert answer["job"] == {
        "run_id": run_ids[0],
        "project": "inet",
        "cell": {"kind": "smoke", "mode": "release"},
        "label": "smoke/release",
        "git_ref": "topic/x",
        "commit_sha": SHA,
        "github_owner": "inet-framework",
        "github_repo": "inet",
        "github_pr_number": 7,
    }
    assert answer["lease_seconds"] == 300
    run = await get_run(db, run_ids[0])
    assert (run.status, run.worker) == (RunStatus.RUNNING, "builder-1")
    assert run.started_at is not None and run.heartbeat_at is not None


async def test_poll_without_queued_runs_says_why(client, db, worker_headers):
    assert await poll(client, worker_headers) == {"job": None, "reason": "no queued runs"}


async def test_poll_skips_runs_that_are_not_queued(client, db, worker_headers):
    project_id = await make_project(db)
    _mr, run_ids = await queue_matrix_run(db, project_id)
    async with db.begin() as session:
        await session.execute(update(TestRun).where(TestRun.id == run_ids[0]).values(status=RunStatus.CANCELLED))
    assert (await poll(client, worker_headers))["job"]["run_id"] == run_ids[1]


@pytest.mark.parametrize(
    ("token_role", "status"), [(None, 401), (Role.READONLY, 403), (Role.WORKER, 200), (Role.ADMIN, 200)]
)
async def test_worker_endpoints_need_the_worker_role(client, make_token, token_role, status):
    headers = {"Authorization": f"Bearer {await make_token(token_role)}"} if token_role else {}
    for path, body in [
        ("/api/workers/poll", {"worker": "w"}),
        ("/api/workers/heartbeat", {"worker": "w", "run_id": 1}),
        ("/api/workers/result", {"run_id": 1, "result_code": "PASS"}),
    ]:
        resp = await client.post(path, json=body, headers=headers)
        if status == 200:
            assert resp.status in (200, 404), path  # authorised: no run 1 exists
        else:
            assert resp.status == status, path
            assert "error" in await resp.json()


@pytest.mark.parametrize(
    "body",
    [{}, {"worker": ""}, {"worker": 5}, {"worker": "x" * 101}, {"worker": "tab\tname"}],
)
async def test_poll_with_a_bad_worker_name_is_400(client, worker_headers, body):
    resp = await client.post("/api/workers/poll", json=body, headers=worker_headers)
    assert resp.status == 400
    assert (await resp.json())["field"] == "worker"


async def test_poll_with_a_body_that_is_not_json_is_400(client, worker_headers):
    resp = await client.post("/api/workers/poll", data=b"worker=w1", headers=worker_headers)
    assert resp.status == 400
    assert "JSON" in (await resp.json())["error"]


async def test_twenty_workers_polling_at_once_share_five_runs_one_each(client, db, worker_headers):
    project_id = await make_project(db)
    _mr, run_ids = await queue_matrix_run(db, project_id, [{"kind": f"k{i}"} for i in range(5)])
    answers = await asyncio.gather(*(poll(client, worker_headers, f"w{i}") for i in range(20)))
    jobs = {f"w{i}": a["job"]["run_id"] for i, a in enumerate(answers) if a["job"] is not None}
    assert sorted(jobs.values()) == run_ids
    async with db() as session:
        holders = {r.id: r.worker for r in await session.scalars(select(TestRun))}
    assert holders == {run_id: worker for worker, run_id in jobs.items()}


async def test_two_app_processes_on_one_database_never_hand_out_a_run_twice(aiohttp_client, settings, db, make_token):
    """Each app has its own engine and connection pool, as two `opp_ci serve` processes would."""
    project_id = await make_project(db)
    _mr, run_ids = await queue_matrix_run(db, project_id, [{"kind": f"k{i}"} for i in range(12)])
    headers = {"Authorization": f"Bearer {await make_token(Role.WORKER)}"}
    first = await aiohttp_client(create_app(settings, background=False))
    second = await aiohttp_client(create_app(settings, background=False))
    answers = await asyncio.gather(
        *(poll(first if i % 2 else second, headers, f"w{i}") for i in range(30))
    )
    claimed = [a["job"]["run_id"] for a in answers if a["job"] is not None]
    assert sorted(claimed) == run_ids


# Heartbeat and the reaper


async def claim(client, db, headers, worker="w1") -> int:
    answer = await poll(client, headers, worker)
    return answer["job"]["run_id"]


async def age_lease(db, run_id: int, seconds: float) -> None:
    """Pretend the run was claimed and last heard from `seconds` ago."""
    then = utcnow() - dt.timedelta(seconds=seconds)
    async with db.begin() as session:
        await session.execute(update(TestRun).where(TestRun.id == run_id).values(started_at=then, heartbeat_at=then))


async def test_heartbeat_keeps_the_lease(client, db, worker_headers, settings):
    project_id = await make_project(db)
    await queue_matrix_run(db, project_id, [{"kind": "smoke"}, {"kind": "build"}])
    beating = await claim(client, db, worker_headers, "w1")
    silent = await claim(client, db, worker_headers, "w2")
    await age_lease(db, beating, settings.worker_lease_seconds + 60)
    await age_lease(db, silent, settings.worker_lease_seconds + 60)

    resp = await client.post("/api/workers/heartbeat", json={"worker": "w1", "run_id": beating}, headers=worker_headers)
    assert resp.status == 200
    answer = await resp.json()
    assert answer["run_id"] == beating and answer["status"] == "running"
    assert dt.datetime.fromisoformat(answer["lease_expires_at"]) > utcnow()

    reaped = await reap_once(db, settings)
    assert reaped.requeued == [silent] and reaped.errored == []
    assert (await get_run(db, beating)).status == RunStatus.RUNNING
    run = await get_run(db, silent)
    assert (run.status, run.worker, run.reclaims) == (RunStatus.QUEUED, None, 1)


async def test_reaper_leaves_runs_alone_until_the_lease_is_over(client, db, worker_headers, settings):
    project_id = await make_project(db)
    await queue_matrix_run(db, project_id, [{"kind": "smoke"}])
    run_id = await claim(client, db, worker_headers)
    almost = utcnow() + dt.timedelta(seconds=settings.worker_lease_seconds - 5)
    assert (await reap_once(db, settings, now=almost)).requeued == []
    later = utcnow() + dt.timedelta(seconds=settings.worker_lease_seconds + 5)
    assert (await reap_once(db, settings, now=later)).requeued == [run_id]


async def test_a_run_reclaimed_three_times_becomes_error_on_the_fourth_expiry(client, db, worker_headers, settings):
    project_id = await make_project(db)
    await queue_matrix_run(db, project_id, [{"kind": "smoke"}], matrix_name="smoke")
    for attempt in range(MAX_RECLAIMS + 1):
        run_id = await claim(client, db, worker_headers, f"w{attempt}")
        later = utcnow() + dt.timedelta(seconds=settings.worker_lease_seconds + 1)
        reaped = await reap_once(db, settings, now=later)
        if attempt < MAX_RECLAIMS:
            assert reaped.requeued == [run_id]
            status = (await pending_calls(db, "status"))[-1].payload
            assert (status["state"], status["description"]) == ("pending", "0/1 done")
        else:
            assert reaped.errored == [run_id]
    run = await get_run(db, run_id)
    assert (run.status, run.reclaims) == (RunStatus.ERROR, MAX_RECLAIMS)
    assert "no heartbeat from worker w3" in run.details
    status = (await pending_calls(db, "status"))[-1].payload
    assert (status["state"], status["context"]) == ("error", "opp_ci/smoke")
    assert (await poll(client, worker_headers))["job"] is None


async def test_heartbeat_errors(client, db, worker_headers):
    project_id = await make_project(db)
    _mr, run_ids = await queue_matrix_run(db, project_id)
    run_id = await claim(client, db, worker_headers, "w1")

    async def beat(body):
        return await client.post("/api/workers/heartbeat", json=body, headers=worker_headers)

    resp = await beat({"worker": "w1", "run_id": 999999})
    assert resp.status == 404
    resp = await beat({"worker": "w2", "run_id": run_id})
    assert resp.status == 409
    assert "running for worker w1" in (await resp.json())["error"]
    resp = await beat({"worker": "w1", "run_id": run_ids[1]})  # still queued
    assert resp.status == 409
    assert "queued" in (await resp.json())["error"]
    assert (await report(client, worker_headers, run_id, "PASS")).status == 200
    resp = await beat({"worker": "w1", "run_id": run_id})
    assert resp.status == 409
    assert "passed" in (await resp.json())["error"]
    for body, field in [({"worker": "w1"}, "run_id"), ({"worker": "w1", "run_id": "1"}, "run_id"), ({"run_id": 1}, "worker")]:
        resp = await beat(body)
        assert resp.status == 400
        assert (await resp.json())["field"] == field


# Results


@pytest.mark.parametrize(
    ("code", "status", "state"),
    [("PASS", "passed", "success"), ("SKIPPED", "passed", "success"), ("FAIL", "failed", "failure"), ("ERROR", "error", "error")],
)
async def test_each_result_code_finishes_the_run_and_queues_the_final_status(
    client, db, worker_headers, code, status, state
):
    project_id = await make_project(db)
    matrix_run_id, _ = await queue_matrix_run(db, project_id, [{"kind": "smoke"}], matrix_name="smoke")
    run_id = await claim(client, db, worker_headers)
    resp = await report(
        client, worker_headers, run_id, code, test_exec_seconds=3.25, stdout="out\n", stderr="err\n", details="exit 0"
    )
    assert resp.status == 200
    assert await resp.json() == {"run_id": run_id, "status": status, "accepted": True}
    run = await get_run(db, run_id)
    assert (run.status.value, run.result_code, run.test_exec_seconds) == (status, code, 3.25)
    assert (run.stdout, run.stderr, run.details) == ("out\n", "err\n", "exit 0")
    assert run.finished_at is not None
    [call] = await pending_calls(db, "status")
    assert call.payload == {
        "sha": SHA,
        "state": state,
        "description": {"success": "passed", "failure": "1 failed of 1", "error": "1 errored of 1"}[state],
        "context": "opp_ci/smoke",
        "target_url": f"http://ci.example.test/matrix-runs/{matrix_run_id}",
    }
    async with db() as session:
        assert (await session.get(TestMatrixRun, matrix_run_id)).finished_at is not None


async def test_a_result_is_pending_until_the_last_run_reports(client, db, worker_headers):
    project_id = await make_project(db)
    await queue_matrix_run(db, project_id)
    first = await claim(client, db, worker_headers)
    await report(client, worker_headers, first, "FAIL")
    [call] = await pending_calls(db, "status")
    assert (call.payload["state"], call.payload["description"]) == ("pending", "1/3 done, 1 failed")


async def test_the_same_result_twice_queues_nothing_more(client, db, worker_headers):
    project_id = await make_project(db)
    await queue_matrix_run(db, project_id, [{"kind": "smoke"}])
    run_id = await claim(client, db, worker_headers)
    assert (await report(client, worker_headers, run_id, "PASS", worker="w1")).status == 200
    calls = await count_calls(db)
    resp = await report(client, worker_headers, run_id, "PASS", worker="w1")
    assert resp.status == 200
    assert await resp.json() == {"run_id": run_id, "status": "passed", "accepted": False, "duplicate": True}
    assert await count_calls(db) == calls


async def test_a_different_result_for_a_finished_run_is_dropped(client, db, worker_headers):
    project_id = await make_project(db)
    await queue_matrix_run(db, project_id, [{"kind": "smoke"}])
    run_id = await claim(client, db, worker_headers)
    await report(client, worker_headers, run_id, "PASS")
    calls = await count_calls(db)
    resp = await report(client, worker_headers, run_id, "FAIL")
    assert resp.status == 200
    assert (await resp.json())["dropped"] == "the run already finished (passed)"
    assert (await get_run(db, run_id)).result_code == "PASS"
    assert await count_calls(db) == calls


async def test_a_result_for_a_cancelled_run_is_dropped(client, db, worker_headers):
    project_id = await make_project(db)
    await queue_matrix_run(db, project_id, [{"kind": "smoke"}])
    run_id = await claim(client, db, worker_headers)
    async with db.begin() as session:
        await session.execute(update(TestRun).where(TestRun.id == run_id).values(status=RunStatus.CANCELLED))
    calls = await count_calls(db)
    resp = await report(client, worker_headers, run_id, "PASS")
    assert resp.status == 200
    assert await resp.json() == {"run_id": run_id, "status": "cancelled", "accepted": False, "dropped": "the run was cancelled"}
    assert await count_calls(db) == calls


async def test_a_result_for_a_reclaimed_run_is_dropped(client, db, worker_headers, settings):
    project_id = await make_project(db)
    await queue_matrix_run(db, project_id, [{"kind": "smoke"}])
    run_id = await claim(client, db, worker_headers, "slow")
    await reap_once(db, settings, now=utcnow() + dt.timedelta(seconds=settings.worker_lease_seconds + 1))
    calls = await count_calls(db)
    resp = await report(client, worker_headers, run_id, "PASS", worker="slow")
    assert (await resp.json())["dropped"] == "the run's lease expired and it was queued again"
    assert await claim(client, db, worker_headers, "fast") == run_id
    resp = await report(client, worker_headers, run_id, "FAIL", worker="slow")
    assert resp.status == 200
    assert (await resp.json())["dropped"] == "the run's lease expired and it now belongs to worker fast"
    assert (await get_run(db, run_id)).status == RunStatus.RUNNING
    assert await count_calls(db) == calls
    resp = await report(client, worker_headers, run_id, "PASS", worker="fast")
    assert (await resp.json())["accepted"] is True


async def test_a_result_for_a_run_never_claimed_is_dropped_saying_so(client, db, worker_headers):
    project_id = await make_project(db)
    _mr, [run_id] = await queue_matrix_run(db, project_id, [{"kind": "smoke"}])
    calls = await count_calls(db)
    resp = await report(client, worker_headers, run_id, "PASS", worker="w1")
    assert resp.status == 200
    assert await resp.json() == {
        "run_id": run_id, "status": "queued", "accepted": False,
        "dropped": "the run is queued and has not been claimed by any worker yet",
    }
    assert await claim(client, db, worker_headers, "w1") == run_id
    resp = await report(client, worker_headers, run_id, "PASS", worker="w2")
    assert (await resp.json())["dropped"] == "the run was claimed by worker w1, not w2"
    assert (await get_run(db, run_id)).status == RunStatus.RUNNING
    assert await count_calls(db) == calls


async def test_a_result_for_an_unknown_run_is_404(client, worker_headers):
    resp = await report(client, worker_headers, 424242, "PASS")
    assert resp.status == 404
    assert await resp.json() == {"error": "no run with id 424242", "field": "run_id"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"result_code": "PASS"}, "run_id"),
        ({"run_id": "1", "result_code": "PASS"}, "run_id"),
        ({"run_id": True, "result_code": "PASS"}, "run_id"),
        ({"run_id": -1, "result_code": "PASS"}, "run_id"),
        ({"run_id": 1}, "result_code"),
        ({"run_id": 1, "result_code": "pass"}, "result_code"),
        ({"run_id": 1, "result_code": "TIMEOUT"}, "result_code"),
        ({"run_id": 1, "result_code": "PASS", "test_exec_seconds": -0.5}, "test_exec_seconds"),
        ({"run_id": 1, "result_code": "PASS", "test_exec_seconds": "3"}, "test_exec_seconds"),
        ({"run_id": 1, "result_code": "PASS", "stdout": ["line"]}, "stdout"),
        ({"run_id": 1, "result_code": "PASS", "stderr": 1}, "stderr"),
        ({"run_id": 1, "result_code": "PASS", "details": {"exit": 1}}, "details"),
        ({"run_id": 1, "result_code": "PASS", "worker": ""}, "worker"),
    ],
)
async def test_a_bad_result_body_is_400_naming_the_field(client, worker_headers, body, field):
    resp = await client.post("/api/workers/result", json=body, headers=worker_headers)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["field"] == field and answer["error"]


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"run_id": 1, "result_code": "PASS", "test_exec_seconds": NaN}'])
async def test_a_result_body_that_is_not_a_json_object_is_400(client, worker_headers, raw):
    resp = await client.post("/api/workers/result", data=raw, headers={**worker_headers, "Content-Type": "application/json"})
    assert resp.status == 400
    assert "error" in await resp.json()


async def test_long_output_keeps_its_end_and_says_what_was_cut(client, db, worker_headers):
    project_id = await make_project(db)
    await queue_matrix_run(db, project_id, [{"kind": "smoke"}])
    run_id = await claim(client, db, worker_headers)
    stdout = "x" * (OUTPUT_MAX_CHARS + 1000) + "the end\n"
    resp = await report(client, worker_headers, run_id, "FAIL", stdout=stdout, stderr="nul \x00 and \ud800 too")
    assert resp.status == 200
    run = await get_run(db, run_id)
    assert run.stdout.startswith("[opp_ci: 1008 earlier characters left out]\n")
    assert run.stdout.endswith("x" * 100 + "the end\n")
    assert len(run.stdout) == OUTPUT_MAX_CHARS + len("[opp_ci: 1008 earlier characters left out]\n")
    assert run.stderr == "nul \ufffd and ? too"


async def test_eight_results_at_once_end_with_the_final_status(client, db, worker_headers):
    """Whatever order the transactions commit in, the last status queued counts all eight runs."""
    project_id = await make_project(db)
    cells = [{"kind": f"k{i}"} for i in range(8)]
    await queue_matrix_run(db, project_id, cells, pr_number=12)
    run_ids = [await claim(client, db, worker_headers, f"w{i}") for i in range(8)]
    codes = ["PASS"] * 7 + ["FAIL"]
    answers = await asyncio.gather(
        *(report(client, worker_headers, run_id, code, worker=f"w{i}") for i, (run_id, code) in enumerate(zip(run_ids, codes)))
    )
    assert [a.status for a in answers] == [200] * 8
    [status] = await pending_calls(db, "status")
    assert (status.payload["state"], status.payload["description"]) == ("failure", "1 failed, 7 passed of 8")
    [comment] = await pending_calls(db, "pr_comment")
    body = comment.payload["body"]
    assert "1 failed, 7 passed of 8" in body
    assert body.count("| ✅ passed |") == 7 and body.count("| ❌ failed |") == 1


async def test_results_for_two_matrix_runs_of_one_pr_at_once_end_in_a_complete_comment(client, db, worker_headers):
    project_id = await make_project(db)
    await queue_matrix_run(db, project_id, [{"kind": f"k{i}"} for i in range(4)], pr_number=12)
    await queue_matrix_run(db, project_id, [{"kind": f"s{i}"} for i in range(4)], matrix_name="smoke", pr_number=12)
    run_ids = [await claim(client, db, worker_headers, f"w{i}") for i in range(8)]
    answers = await asyncio.gather(*(report(client, worker_headers, run_id, "PASS") for run_id in run_ids))
    assert [a.status for a in answers] == [200] * 8
    [comment] = await pending_calls(db, "pr_comment")
    assert "### ✅ opp_ci: inet — success" in comment.payload["body"]
    assert comment.payload["body"].count("| ✅ passed |") == 8


async def test_the_app_runs_the_reaper_in_the_background(aiohttp_client, settings, engine, db, worker_headers):
    app = create_app(settings.replace(worker_lease_seconds=1), engine=engine, background=True)
    client = await aiohttp_client(app)
    project_id = await make_project(db)
    await queue_matrix_run(db, project_id, [{"kind": "smoke"}])
    run_id = await claim(client, db, worker_headers)
    for _ in range(100):
        await asyncio.sleep(0.1)
        run = await get_run(db, run_id)
        if run.status == RunStatus.QUEUED:
            break
    assert (run.status, run.reclaims) == (RunStatus.QUEUED, 1)


async def test_a_result_with_a_whole_log_is_accepted_and_keeps_its_tail(client, db, worker_headers):
    project_id = await make_project(db)
    await queue_matrix_run(db, project_id, [{"kind": "smoke"}, {"kind": "build"}])
    run_id = await claim(client, db, worker_headers)
    log = "".join(f"line {i}\n" for i in range(400_000))  # about 4.6 MB, over the usual 1 MiB body limit
    resp = await report(client, worker_headers, run_id, "FAIL", stdout=log, details="d" * 20_000)
    assert resp.status == 200, await resp.text()
    run = await get_run(db, run_id)
    assert run.stdout.endswith("line 399999\n") and len(run.stdout) < OUTPUT_MAX_CHARS + 100
    assert run.details == "d" * 16384 + "\n[opp_ci: cut to 16384 characters]"
    other = await claim(client, db, worker_headers)
    resp = await report(client, worker_headers, other, "PASS", stdout="x" * (17 * 1024 * 1024))
    assert resp.status == 413
    assert "error" in await resp.json()
    assert (await get_run(db, other)).status == RunStatus.RUNNING


async def test_two_reapers_at_once_reclaim_each_run_once(client, db, worker_headers, settings):
    project_id = await make_project(db)
    await queue_matrix_run(db, project_id, [{"kind": f"k{i}"} for i in range(6)])
    run_ids = [await claim(client, db, worker_headers, f"w{i}") for i in range(6)]
    other_engine = create_engine(settings.database_url)
    try:
        later = utcnow() + dt.timedelta(seconds=settings.worker_lease_seconds + 1)
        first, second = await asyncio.gather(
            reap_once(db, settings, now=later), reap_once(sessionmaker(other_engine), settings, now=later)
        )
    finally:
        await other_engine.dispose()
    assert sorted(first.requeued + second.requeued) == run_ids
    for run_id in run_ids:
        assert (await get_run(db, run_id)).reclaims == 1
