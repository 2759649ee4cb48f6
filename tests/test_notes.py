"""Git notes: note text, the notes API, the dispatch queued when a commit finishes, and the workflow template run for real."""

import asyncio
import logging
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from opp_ci_app import catalog
from opp_ci_app.cli_notes import workflow_template
from opp_ci_app.models import CallState, GitHubCall, RunStatus, TestMatrixRun, TestRun, utcnow
from opp_ci_app.notes import note_text, queue_dispatch_if_done, summary_line, RunLine

P, F, E = RunStatus.PASSED, RunStatus.FAILED, RunStatus.ERROR


@pytest.mark.parametrize(
    "statuses, line",
    [
        ([P, P], "✅ PASS 2/2"),
        ([F, F], "❌ FAIL 0/2"),
        ([P, F], "❌ 1 PASS, 1 FAIL (2 total)"),
        ([P, E, F], "❌ 1 PASS, 1 FAIL, 1 ERROR (3 total)"),
        ([E], "❌ ERROR 0/1"),
    ],
)
def test_summary_line(statuses, line):
    assert summary_line(statuses) == line


def test_note_text():
    text = note_text(
        [RunLine(8, "fingerprint/release", F, 75.0), RunLine(7, "smoke/release", P, 3.25)],
        "http://ci.example.test/runs?project=inet&commit=abc",
    )
    assert text == (
        "❌ 1 PASS, 1 FAIL (2 total)\n"
        "✅ smoke/release PASS 3.2s (run 7)\n"
        "❌ fingerprint/release FAIL 1m15s (run 8)\n"
        "\n"
        "http://ci.example.test/runs?project=inet&commit=abc\n"
    )


async def add_commit(db, sha: str, statuses: list[RunStatus], owner="inet-framework", repo="inet") -> TestMatrixRun:
    """A finished (or not) matrix run on `sha` with one run per status."""
    async with db.begin() as session:
        project = await catalog.find_project_by_repo(session, owner, repo)
        matrix_run = TestMatrixRun(
            project_id=project.id, matrix_name="inet-full", trigger="push", git_ref="master", github_owner=owner,
            github_repo=repo, github_commit_sha=sha,
        )
        session.add(matrix_run)
        await session.flush()
        for i, status in enumerate(statuses):
            session.add(
                TestRun(
                    matrix_run_id=matrix_run.id, project_id=project.id, cell={"kind": f"k{i}"}, label=f"k{i}",
                    status=status, git_ref="master", github_owner=owner, github_repo=repo, github_commit_sha=sha,
                    test_exec_seconds=1.5 if status.finished else None, finished_at=utcnow() if status.finished else None,
                )
            )
    return matrix_run


@pytest.fixture
async def inet(db):
    async with db.begin() as session:
        await catalog.create_project(session, "inet", "inet-framework", "inet")


async def test_notes_api(client, db, inet, readonly_headers):
    await add_commit(db, "a" * 40, [P, P])
    await add_commit(db, "b" * 40, [F, F])
    await add_commit(db, "c" * 40, [P, F])
    await add_commit(db, "d" * 40, [P, RunStatus.RUNNING])
    resp = await client.get("/api/notes/INET-Framework/inet", headers=readonly_headers)
    assert resp.status == 200
    notes = {n["sha"]: n["note"] for n in await resp.json()}
    assert set(notes) == {"a" * 40, "b" * 40, "c" * 40}
    assert notes["a" * 40].startswith("✅ PASS 2/2\n✅ k0 PASS 1.5s (run ")
    assert notes["b" * 40].startswith("❌ FAIL 0/2\n")
    assert notes["c" * 40].startswith("❌ 1 PASS, 1 FAIL (2 total)\n")
    assert notes["c" * 40].endswith(f"\n\nhttp://ci.example.test/runs?project=inet&commit={'c' * 40}\n")


async def test_notes_api_errors(client, inet, readonly_headers):
    assert (await client.get("/api/notes/inet-framework/inet")).status == 401
    resp = await client.get("/api/notes/nobody/nothing", headers=readonly_headers)
    assert resp.status == 404
    resp = await client.get("/api/notes/inet-framework/inet?limit=0", headers=readonly_headers)
    assert resp.status == 422 and (await resp.json())["field"] == "limit"


async def test_dispatch_queued_once_per_repository_when_commit_finishes(db, inet, settings):
    settings = settings.replace(github_actions_token="ghs_actions")
    running = await add_commit(db, "d" * 40, [P, RunStatus.RUNNING])
    async with db.begin() as session:
        assert not await queue_dispatch_if_done(session, settings, [await session.get(TestMatrixRun, running.id)])
    first = await add_commit(db, "a" * 40, [P, P])
    second = await add_commit(db, "b" * 40, [F])
    for matrix_run in (first, second):
        async with db.begin() as session:
            assert await queue_dispatch_if_done(session, settings, [await session.get(TestMatrixRun, matrix_run.id)])
    async with db() as session:
        calls = list(await session.scalars(select(GitHubCall).order_by(GitHubCall.id)))
    assert [(c.kind, c.state) for c in calls] == [
        ("workflow_dispatch", CallState.SUPERSEDED),
        ("workflow_dispatch", CallState.PENDING),
    ]
    assert calls[-1].payload == {"workflow": "ci-notes.yml", "ref": None}
    assert (calls[-1].github_owner, calls[-1].github_repo) == ("inet-framework", "inet")


async def test_no_actions_token_skips_dispatch_with_one_log_line(db, inet, settings, caplog):
    matrix_run = await add_commit(db, "a" * 40, [P])
    caplog.set_level(logging.INFO, logger="opp_ci_app.notes")
    async with db.begin() as session:
        assert not await queue_dispatch_if_done(session, settings, [await session.get(TestMatrixRun, matrix_run.id)])
    assert [r.message for r in caplog.records] == ["notes workflow not dispatched: OPP_CI_GITHUB_ACTIONS_TOKEN is not set"]
    async with db() as session:
        assert not list(await session.scalars(select(GitHubCall)))


# The workflow template


def test_template_shape():
    workflow = yaml.safe_load(workflow_template())
    assert True in workflow and "workflow_dispatch" in workflow[True]  # YAML 1.1 reads `on` as True
    assert workflow["permissions"] == {"contents": "write"}
    assert workflow["concurrency"]["cancel-in-progress"] is False
    steps = workflow["jobs"]["notes"]["steps"]
    assert "--force" not in next(s["run"] for s in steps if s.get("name") == "Push notes").replace("add --force", "")


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


async def run_workflow(workdir: Path, base_url: str, token: str, tmp_path: Path, only: set[str] | None = None) -> str:
    """Run the template's shell steps the way the Actions runner would, after actions/checkout."""
    steps = yaml.safe_load(workflow_template())["jobs"]["notes"]["steps"]
    output = []
    for step in steps:
        if "run" not in step or (only is not None and step["name"] not in only):
            continue
        env = {
            **os.environ,
            "OPP_CI_URL": base_url,
            "OPP_CI_READONLY_TOKEN": token,
            "GITHUB_REPOSITORY": "inet-framework/inet",
            "RUNNER_TEMP": str(tmp_path),
        }
        proc = await asyncio.create_subprocess_exec(
            "bash", "-e", "-c", step["run"], cwd=workdir, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        output.append(out.decode())
        assert proc.returncode == 0, f"step {step['name']!r} failed:\n{out.decode()}"
    return "".join(output)


@pytest.fixture
def origin(tmp_path) -> tuple[Path, list[str]]:
    """A bare origin with two commits, and their shas."""
    seed = tmp_path / "seed"
    seed.mkdir()
    git(seed, "init", "-q", "-b", "master")
    shas = []
    for name in ("one", "two", "three"):
        (seed / name).write_text(name)
        git(seed, "add", name)
        git(seed, "commit", "-q", "-m", name)
        shas.append(git(seed, "rev-parse", "HEAD"))
    git(tmp_path, "clone", "-q", "--bare", str(seed), "origin.git")
    return tmp_path / "origin.git", shas


async def test_template_writes_and_pushes_notes(client, db, inet, readonly_headers, origin, tmp_path):
    bare, (one, two, three) = origin
    await add_commit(db, one, [P, P])
    await add_commit(db, two, [P, F])
    await add_commit(db, "f" * 40, [P])  # a fork's PR head: not in this repository
    token = readonly_headers["Authorization"].split()[1]
    resp = await client.get("/api/notes/inet-framework/inet", headers=readonly_headers)
    expected = {n["sha"]: n["note"] for n in await resp.json()}

    base_url = str(client.make_url("")).rstrip("/")
    runner = tmp_path / "runner"
    git(tmp_path, "clone", "-q", str(bare), str(runner))
    out = await run_workflow(runner, base_url, token, tmp_path, only={"Fetch existing notes", "Write notes from opp_ci"})
    assert f"skipping {'f' * 40}" in out
    assert "notes written: 2, unchanged: 0, skipped: 1" in out

    # Someone else pushes notes between the runner's fetch and its push: it must merge, not force.
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(bare), str(other))
    git(other, "notes", "--ref=ci", "add", "-m", "hand-written note", three)
    git(other, "push", "-q", "origin", "refs/notes/ci:refs/notes/ci")
    out = await run_workflow(runner, base_url, token, tmp_path, only={"Push notes"})
    assert "merging and retrying" in out

    check = tmp_path / "check"
    git(tmp_path, "clone", "-q", str(bare), str(check))
    git(check, "fetch", "-q", "origin", "refs/notes/ci:refs/notes/ci")
    assert git(check, "notes", "--ref=ci", "show", two) + "\n" == expected[two]
    assert git(check, "notes", "--ref=ci", "show", one) + "\n" == expected[one]
    assert git(check, "notes", "--ref=ci", "show", three) == "hand-written note"
    log = git(check, "log", "--notes=ci", "-1", two)
    assert "❌ 1 PASS, 1 FAIL (2 total)" in log

    # Running again changes nothing.
    again = await run_workflow(runner, base_url, token, tmp_path)
    assert "notes written: 0, unchanged: 2, skipped: 1" in again


async def test_note_link_lists_the_commits_runs(client, db, inet, readonly_headers):
    await add_commit(db, "a" * 40, [P, F])
    other = await add_commit(db, "b" * 40, [P])
    async with db() as session:
        other_run = (await session.scalars(select(TestRun.id).where(TestRun.matrix_run_id == other.id))).one()
    notes = await (await client.get("/api/notes/inet-framework/inet", headers=readonly_headers)).json()
    link = next(n["note"] for n in notes if n["sha"] == "a" * 40).splitlines()[-1]
    page = await (await client.get(link.replace("http://ci.example.test", ""))).text()
    shown = set(re.findall(r'href="/runs/(\d+)"', page))
    assert len(shown) == 2 and str(other_run) not in shown
    resp = await client.get("/runs?commit=xyz")
    assert resp.status == 400 and "commit must be a commit SHA" in await resp.text()


async def test_runs_github_is_not_told_of_make_no_notes(client, db, inet, readonly_headers):
    await add_commit(db, "a" * 40, [P])
    test_only = await add_commit(db, "b" * 40, [F])
    mixed = await add_commit(db, "a" * 40, [F])
    async with db.begin() as session:
        for matrix_run_id in (test_only.id, mixed.id):
            (await session.get(TestMatrixRun, matrix_run_id)).report_to_github = False
    notes = await (await client.get("/api/notes/inet-framework/inet", headers=readonly_headers)).json()
    assert [(n["sha"], n["note"].splitlines()[0]) for n in notes] == [("a" * 40, "✅ PASS 1/1")]


async def test_commits_whose_runs_were_all_cancelled_get_no_note(client, db, inet, readonly_headers):
    await add_commit(db, "a" * 40, [RunStatus.CANCELLED, RunStatus.CANCELLED])
    await add_commit(db, "b" * 40, [RunStatus.CANCELLED, P])
    notes = await (await client.get("/api/notes/inet-framework/inet", headers=readonly_headers)).json()
    assert [(n["sha"], n["note"].splitlines()[0]) for n in notes] == [("b" * 40, "❌ 1 PASS, 1 CANCELLED (2 total)")]
