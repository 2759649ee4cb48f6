"""What GitHub should be told after runs change: statuses (and, later, PR comments and notes)."""

from __future__ import annotations

from typing import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from . import statuses
from .config import Settings
from .github.queue import Call, CallKind, enqueue, status_key
from .models import TestMatrixRun, TestRun, utcnow


def matrix_run_url(settings: Settings, matrix_run_id: int) -> str:
    return f"{settings.public_url}/matrix-runs/{matrix_run_id}"


def status_call(settings: Settings, matrix_run: TestMatrixRun, run_statuses: Iterable) -> Call:
    """The commit status call for a matrix run whose runs have `run_statuses`."""
    state, description = statuses.aggregate(run_statuses)
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
    """Queue the current status of each matrix run (coalesced with anything still unsent)."""
    ids = sorted(set(matrix_run_ids))
    if not ids:
        return
    matrix_runs = {
        m.id: m for m in await session.scalars(select(TestMatrixRun).where(TestMatrixRun.id.in_(ids)))
    }
    by_matrix_run: dict[int, list] = {i: [] for i in ids}
    for matrix_run_id, status in await session.execute(
        select(TestRun.matrix_run_id, TestRun.status).where(TestRun.matrix_run_id.in_(ids))
    ):
        by_matrix_run[matrix_run_id].append(status)
    calls = []
    now = utcnow()
    for matrix_run_id, run_statuses in by_matrix_run.items():
        matrix_run = matrix_runs[matrix_run_id]
        calls.append(status_call(settings, matrix_run, run_statuses))
        if run_statuses and all(s.finished for s in run_statuses) and matrix_run.finished_at is None:
            matrix_run.finished_at = now
    await enqueue(session, calls)
