"""The body of the sticky PR comment: marker, summary of the PR head's matrix runs, a table; pure."""

from __future__ import annotations

import re
from typing import Sequence

from . import statuses
from .models import RunStatus, TestMatrixRun, TestRun

BODY_MAX = 65_536
MARKER = "<!-- opp_ci:pr-comment:{project} -->"
SHORT_SHA = 7
TABLE_HEADER = "| matrix | cell | status | duration | run |\n|---|---|---|---|---|\n"
LEFT_OUT = "\n_{count} more {rows} left out to keep this comment under {limit:,} characters; all runs are on the matrix run {pages}._\n"

RUN_ICONS = {
    RunStatus.QUEUED: "⏳",
    RunStatus.RUNNING: "🔄",
    RunStatus.PASSED: "✅",
    RunStatus.FAILED: "❌",
    RunStatus.ERROR: "⚠️",
    RunStatus.CANCELLED: "🚫",
}
STATE_ICONS = {
    statuses.State.PENDING: "⏳",
    statuses.State.SUCCESS: "✅",
    statuses.State.FAILURE: "❌",
    statuses.State.ERROR: "⚠️",
}
# Worst first, so a cut table keeps the rows people look for.
ROW_ORDER = [RunStatus.FAILED, RunStatus.ERROR, RunStatus.CANCELLED, RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.PASSED]

# Every ASCII character Markdown may treat as syntax; a backslash makes it literal.
MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~&:])")


def marker(project_name: str) -> str:
    """The hidden first line that identifies the comment of `project_name`."""
    return MARKER.format(project=project_name)


def escape(text: str) -> str:
    """User text as literal Markdown on one line: no links, HTML, table breaks or @mentions."""
    one_line = " ".join(str(text).split())
    # A zero-width space after @ keeps GitHub from notifying whoever the text names.
    return MARKDOWN_SPECIAL.sub(r"\\\1", one_line).replace("@", "@\u200b")


def duration(run: TestRun) -> str:
    """How long a run took: the worker's own measure, else the wall clock; `—` while unknown."""
    seconds = run.test_exec_seconds
    if seconds is None and run.started_at is not None and run.finished_at is not None:
        seconds = (run.finished_at - run.started_at).total_seconds()
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _link(text: str, url: str) -> str:
    return f"[{text}]({url})"


def _row(public_url: str, matrix_run: TestMatrixRun, run: TestRun) -> str:
    status = RunStatus(run.status)
    cells = [
        escape(matrix_run.matrix_name),
        escape(run.label),
        f"{RUN_ICONS[status]} {status.value}",
        duration(run),
        _link(f"#{run.id}", f"{public_url}/runs/{run.id}"),
    ]
    return "| " + " | ".join(cells) + " |\n"


def render(
    project_name: str,
    public_url: str,
    status_context: str,
    matrix_runs: Sequence[tuple[TestMatrixRun, Sequence[TestRun]]],
    limit: int = BODY_MAX,
) -> str:
    """The comment for one project on one PR: `matrix_runs` are the PR head's, each with its runs."""
    all_runs = [run for _m, runs in matrix_runs for run in runs]
    state, summary = statuses.aggregate(r.status for r in all_runs)
    head = matrix_runs[0][0] if matrix_runs else None
    lines = [marker(project_name), f"### {STATE_ICONS[state]} opp_ci: {escape(project_name)} — {state.value}", ""]
    if head is not None:
        lines.append(
            f"{summary} on `{head.github_commit_sha[:SHORT_SHA]}` "
            f"(the head of branch {escape(head.git_ref)})."
        )
        lines.append("")
    for matrix_run, runs in matrix_runs:
        run_state, run_summary = statuses.aggregate(r.status for r in runs)
        context = statuses.context(status_context, matrix_run.matrix_name)
        url = f"{public_url}/matrix-runs/{matrix_run.id}"
        lines.append(f"- {STATE_ICONS[run_state]} {_link(escape(context), url)}: {run_state.value}, {run_summary}")
    top = "\n".join(lines) + "\n\n" + TABLE_HEADER

    order = {status: i for i, status in enumerate(ROW_ORDER)}
    rows = [
        _row(public_url, matrix_run, run)
        for matrix_run, run in sorted(
            ((m, r) for m, runs in matrix_runs for r in runs),
            key=lambda pair: (order[RunStatus(pair[1].status)], pair[0].id, pair[1].id),
        )
    ]
    body = top + "".join(rows)
    if len(body) <= limit:
        return body
    pages = ", ".join(_link(f"#{m.id}", f"{public_url}/matrix-runs/{m.id}") for m, _runs in matrix_runs[:10])
    kept_length = len(top)
    kept = 0
    for row in rows:
        note = _left_out(len(rows) - kept - 1, limit, pages)
        if kept_length + len(row) + len(note) > limit:
            break
        kept_length += len(row)
        kept += 1
    body = top + "".join(rows[:kept]) + _left_out(len(rows) - kept, limit, pages)
    # Only a head with an absurd number of matrix runs gets here: cut hard, still under the limit.
    return body if len(body) <= limit else body[: limit - 2] + "…\n"


def _left_out(count: int, limit: int, pages: str) -> str:
    return LEFT_OUT.format(count=count, rows="row" if count == 1 else "rows", limit=limit, pages=pages)

