"""What GitHub should be told after runs change: commit statuses, the sticky PR comment, the notes dispatch."""

from __future__ import annotations

import hashlib
from typing import Iterable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from . import notes, pr_comment, statuses
from .config import Settings
from .github.queue import Call, CallKind, enqueue, pr_comment_key, status_key
from .models import RunStatus, TestMatrixRun, TestRun, utcnow


def matrix_run_url(settings: Settings, matrix_run_id: int) -> str:
    return f"{settings.public_url}/matrix-runs/{matrix_run_id}"


def status_call(settings: Settings, matrix_run: TestMatrixRun, run_statuses: Iterable) -> Call:
    """The commit status call for a matrix run whose runs have `run_statuses`."""
    return aggregated_status_call(settings, matrix_run, *statuses.aggregate(run_statuses))


def aggregated_status_call(settings: Settings, matrix_run: TestMatrixRun, state: statuses.State, description: str) -> Call:
    """The commit status call for a matrix run whose runs add up to `state` and `description`."""
    ctx = statuses.context(settings.status_context, matrix_run.matrix_name)
    return Call(
        kind=CallKind.STATUS,
        coalesce_key=status_key(matrix_run.github_owner, matrix_run.github_repo, matrix_run.github_commit_sha, ctx),
        github_owner=matrix_run.github_owner,
        github_repo=matrix_run.github_repo,
        project_id=matrix_run.project_id,
        matrix_run_id=matrix_run.id,
        payload={
            "sha": matrix_run.github_commit_sha,
            "state": state.value,
            "description": description,
            "context": ctx,
            "target_url": matrix_run_url(settings, matrix_run.id),
        },
    )


async def update_github_status(session: AsyncSession, settings: Settings, matrix_run_ids: Iterable[int]) -> None:
    """Queue the current status of each matrix run, and the PR comment of each PR they belong to.

    Call it in the transaction that changed the runs; what it queues replaces anything still unsent.
    """
    ids = sorted(set(matrix_run_ids))
    if not ids:
        return
    # Which PRs these belong to never changes, so it is read before any lock is taken.
    pr_rows = await session.execute(
        select(TestMatrixRun.project_id, TestMatrixRun.github_pr_number)
        .where(TestMatrixRun.id.in_(ids), TestMatrixRun.github_pr_number.is_not(None))
        .distinct()
    )
    prs = sorted((project_id, pr_number) for project_id, pr_number in pr_rows)
    if session.bind.dialect.name == "postgresql":
        # Lock order everywhere: PR comment locks, then matrix runs by id. SQLite's write lock serializes it all.
        for project_id, pr_number in prs:
            await session.execute(select(func.pg_advisory_xact_lock(_pr_lock_key(project_id, pr_number))))
    # Results of one matrix run queue its status one after another: the last to commit sees every run.
    matrix_runs = {
        m.id: m
        for m in await session.scalars(
            select(TestMatrixRun)
            .where(TestMatrixRun.id.in_(ids))
            .order_by(TestMatrixRun.id)
            .with_for_update(key_share=True, of=TestMatrixRun)
            .execution_options(populate_existing=True)
        )
    }
    by_matrix_run: dict[int, list] = {i: [] for i in matrix_runs}
    for matrix_run_id, status in await session.execute(
        select(TestRun.matrix_run_id, TestRun.status).where(TestRun.matrix_run_id.in_(list(matrix_runs)))
    ):
        by_matrix_run[matrix_run_id].append(status)
    calls = []
    just_finished = []
    now = utcnow()
    for matrix_run_id, run_statuses in by_matrix_run.items():
        matrix_run = matrix_runs[matrix_run_id]
        if run_statuses and all(s.finished for s in run_statuses) and matrix_run.finished_at is None:
            matrix_run.finished_at = now
            if matrix_run.report_to_github and any(s is not RunStatus.CANCELLED for s in run_statuses):
                just_finished.append(matrix_run)
        if matrix_run.report_to_github:
            calls.append(status_call(settings, matrix_run, run_statuses))
    for project_id, pr_number in prs:
        touched = [
            m for m in matrix_runs.values()
            if (m.project_id, m.github_pr_number) == (project_id, pr_number) and m.report_to_github
        ]
        if not touched:
            continue
        call = await pr_comment_call(session, settings, project_id, pr_number, touched)
        if call is not None:
            calls.append(call)
    await enqueue(session, calls)
    # A commit whose last run just finished gets its git note (through the notes workflow).
    await notes.queue_dispatch_if_done(session, settings, just_finished)


def _pr_lock_key(project_id: int, pr_number: int) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory lock of one project's comment on one PR."""
    digest = hashlib.sha256(f"opp_ci:pr-comment:{project_id}:{pr_number}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def pr_comment_call(
    session: AsyncSession, settings: Settings, project_id: int, pr_number: int, touched: list[TestMatrixRun]
) -> Call | None:
    """The PR comment call for one project on one PR, or None when `touched` are not at the PR's head.

    The caller holds the PR's lock (see update_github_status), so the body counts every committed result.
    """
    newest = await session.scalar(
        select(TestMatrixRun.github_commit_sha)
        .where(
            TestMatrixRun.project_id == project_id,
            TestMatrixRun.github_pr_number == pr_number,
            TestMatrixRun.report_to_github.is_(True),
        )
        .order_by(TestMatrixRun.event_at.desc().nulls_last(), TestMatrixRun.id.desc())
        .limit(1)
    )
    if newest is None or not any(m.github_commit_sha == newest for m in touched):
        return None
    head = list(
        await session.scalars(
            select(TestMatrixRun)
            .where(
                TestMatrixRun.project_id == project_id,
                TestMatrixRun.github_pr_number == pr_number,
                TestMatrixRun.github_commit_sha == newest,
                TestMatrixRun.report_to_github.is_(True),
            )
            .order_by(TestMatrixRun.id)
        )
    )
    runs: dict[int, list[TestRun]] = {m.id: [] for m in head}
    for run in await session.scalars(
        select(TestRun).where(TestRun.matrix_run_id.in_(list(runs))).order_by(TestRun.id)
    ):
        runs[run.matrix_run_id].append(run)
    first = head[0]
    body = pr_comment.render(first.project.name, settings.public_url, settings.status_context, [(m, runs[m.id]) for m in head])
    return Call(
        kind=CallKind.PR_COMMENT,
        coalesce_key=pr_comment_key(first.github_owner, first.github_repo, pr_number, project_id),
        github_owner=first.github_owner,
        github_repo=first.github_repo,
        project_id=project_id,
        matrix_run_id=head[-1].id,
        payload={"pr_number": pr_number, "project_id": project_id, "project_name": first.project.name, "body": body},
    )
