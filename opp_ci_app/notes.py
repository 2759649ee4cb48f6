"""Git notes: the note text of a finished commit, the notes API, and queuing the notes workflow."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from .appkeys import SESSIONMAKER, SETTINGS
from .auth import require_role
from .catalog import Invalid, NotFound, find_project_by_repo
from .config import Settings
from .github.queue import Call, CallKind, dispatch_key, enqueue
from .models import Project, Role, RunStatus, TestMatrixRun, TestRun

log = logging.getLogger(__name__)

NOTES_REF = "refs/notes/ci"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PASS_ICON, FAIL_ICON = "✅", "❌"
RESULT_WORDS = {
    RunStatus.PASSED: "PASS",
    RunStatus.FAILED: "FAIL",
    RunStatus.ERROR: "ERROR",
    RunStatus.CANCELLED: "CANCELLED",
}
UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING)
RUN_ICONS = {RunStatus.PASSED: "✅", RunStatus.FAILED: "❌", RunStatus.ERROR: "⚠️", RunStatus.CANCELLED: "⏹️"}

routes = web.RouteTableDef()


@dataclass(frozen=True)
class RunLine:
    """What a note says of one finished run."""

    run_id: int
    label: str
    status: RunStatus
    seconds: float | None


def commit_url(settings: Settings, project_name: str, sha: str) -> str:
    """The app's page of one commit's runs."""
    return f"{settings.public_url}/runs?{urlencode({'project': project_name, 'commit': sha})}"


def summary_line(statuses: Sequence[RunStatus]) -> str:
    """`✅ PASS 2/2`, `❌ FAIL 0/2`, `❌ 1 PASS, 1 FAIL (2 total)`."""
    counts = Counter(statuses)
    total = len(statuses)
    passed = counts[RunStatus.PASSED]
    if len(counts) == 1:
        (only,) = counts
        icon = PASS_ICON if only == RunStatus.PASSED else FAIL_ICON
        return f"{icon} {RESULT_WORDS[only]} {passed}/{total}"
    parts = [f"{counts[s]} {word}" for s, word in RESULT_WORDS.items() if counts[s]]
    return f"{FAIL_ICON} {', '.join(parts)} ({total} total)"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def note_text(runs: Sequence[RunLine], link: str) -> str:
    """opp_ci's note: a summary line, one line per run, a blank line, the link."""
    lines = [summary_line([r.status for r in runs])]
    for run in sorted(runs, key=lambda r: r.run_id):
        word = RESULT_WORDS.get(run.status, run.status.value.upper())
        lines.append(f"{RUN_ICONS.get(run.status, '')} {run.label} {word} {format_duration(run.seconds)} (run {run.run_id})")
    lines += ["", link]
    return "\n".join(lines) + "\n"


def _reported_runs(*columns):
    """A select of `columns` over runs GitHub is told of (not those of `rule test-webhook --queue`)."""
    return (
        select(*columns)
        .join(TestMatrixRun, TestRun.matrix_run_id == TestMatrixRun.id)
        .where(TestMatrixRun.report_to_github.is_(True))
    )


async def finished_commit_notes(
    session: AsyncSession, settings: Settings, project: Project, limit: int = DEFAULT_LIMIT
) -> list[dict[str, str]]:
    """`[{"sha", "note"}]` for the project's commits whose runs have all finished, newest first."""
    unfinished = _reported_runs(TestRun.github_commit_sha).where(
        TestRun.project_id == project.id, TestRun.status.in_(UNFINISHED)
    )
    newest = (
        _reported_runs(TestRun.github_commit_sha)
        .where(TestRun.project_id == project.id, TestRun.github_commit_sha.not_in(unfinished))
        .group_by(TestRun.github_commit_sha)
        # A commit whose runs were all cancelled (superseded before they ran) has no result to note.
        .having(func.count().filter(TestRun.status != RunStatus.CANCELLED) > 0)
        .order_by(func.max(TestRun.finished_at).desc(), TestRun.github_commit_sha)
        .limit(limit)
    )
    shas = list(await session.scalars(newest))
    if not shas:
        return []
    by_sha: dict[str, list[RunLine]] = defaultdict(list)
    rows = await session.execute(
        _reported_runs(
            TestRun.github_commit_sha, TestRun.id, TestRun.label, TestRun.status, TestRun.test_exec_seconds
        ).where(TestRun.project_id == project.id, TestRun.github_commit_sha.in_(shas))
    )
    for sha, run_id, label, status, seconds in rows:
        by_sha[sha].append(RunLine(run_id, label, status, seconds))
    return [{"sha": sha, "note": note_text(by_sha[sha], commit_url(settings, project.name, sha))} for sha in shas]


async def queue_dispatch_if_done(session: AsyncSession, settings: Settings, matrix_runs: Iterable[TestMatrixRun]) -> bool:
    """Queue one notes workflow dispatch per repository whose commit just finished all its runs."""
    commits = {(m.project_id, m.github_commit_sha): m for m in matrix_runs}
    if not commits:
        return False
    still_running = set(
        (
            await session.execute(
                _reported_runs(TestRun.project_id, TestRun.github_commit_sha)
                .where(tuple_(TestRun.project_id, TestRun.github_commit_sha).in_(list(commits)))
                .where(TestRun.status.in_(UNFINISHED))
                .distinct()
            )
        ).all()
    )
    projects = {m.project_id: m for key, m in commits.items() if key not in still_running}
    if not projects:
        return False
    if not settings.github_actions_token:
        log.info("notes workflow not dispatched: OPP_CI_GITHUB_ACTIONS_TOKEN is not set")
        return False
    calls = []
    for matrix_run in projects.values():
        project = matrix_run.project
        calls.append(
            Call(
                kind=CallKind.WORKFLOW_DISPATCH,
                coalesce_key=dispatch_key(project.github_owner, project.github_repo),
                github_owner=project.github_owner,
                github_repo=project.github_repo,
                project_id=project.id,
                matrix_run_id=matrix_run.id,
                payload={"workflow": settings.notes_workflow, "ref": project.default_branch},
            )
        )
    await enqueue(session, calls)
    return True


@routes.get("/api/notes/{owner}/{repo}")
@require_role(Role.READONLY)
async def get_notes(request: web.Request) -> web.Response:
    owner, repo = request.match_info["owner"], request.match_info["repo"]
    try:
        limit = int(request.query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise Invalid("limit must be a whole number", "limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}", "limit")
    async with request.app[SESSIONMAKER]() as session:
        project = await find_project_by_repo(session, owner, repo)
        if project is None:
            raise NotFound(f"no project for {owner}/{repo}", "repo")
        notes = await finished_commit_notes(session, request.app[SETTINGS], project, limit)
    return web.json_response(notes)


def setup(app: web.Application) -> None:
    """Register the notes API."""
    app.router.add_routes(routes)
