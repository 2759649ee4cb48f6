"""The sticky PR comment's body: marker, summary, table, escaping and the 65,536-character cut."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from opp_ci_app.models import RunStatus, TestMatrixRun, TestRun
from opp_ci_app.pr_comment import BODY_MAX, duration, escape, marker, render

URL = "http://ci.example.test"
SHA = "0123456789abcdef" * 2 + "01234567"


def matrix_run(id: int = 5, name: str = "inet-full", git_ref: str = "topic/x") -> TestMatrixRun:
    return TestMatrixRun(
        id=id, project_id=1, matrix_name=name, trigger="pull_request", git_ref=git_ref,
        github_owner="inet-framework", github_repo="inet", github_commit_sha=SHA, github_pr_number=12,
    )


def run(id: int, label: str, status: RunStatus, seconds: float | None = None, matrix_run_id: int = 5) -> TestRun:
    return TestRun(id=id, matrix_run_id=matrix_run_id, project_id=1, cell={}, label=label, status=status, test_exec_seconds=seconds)


def table_rows(body: str) -> list[str]:
    return [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| matrix |")]


def test_body_starts_with_the_marker_and_summarises_the_head():
    body = render(
        "inet",
        URL,
        "opp_ci",
        [
            (matrix_run(5), [run(10, "smoke/release", RunStatus.PASSED, 3.1), run(11, "fingerprint/debug", RunStatus.FAILED, 125)]),
            (matrix_run(6, "smoke"), [run(12, "smoke", RunStatus.RUNNING, matrix_run_id=6)]),
        ],
    )
    lines = body.splitlines()
    assert lines[0] == "<!-- opp_ci:pr-comment:inet -->"
    assert lines[1] == "### ⏳ opp_ci: inet — pending"
    assert "2/3 done, 1 failed, 1 running on `0123456` (the head of branch topic/x)." in body
    assert f"- ❌ [opp\\_ci/inet\\-full]({URL}/matrix-runs/5): failure, 1 failed, 1 passed of 2" in lines
    assert f"- ⏳ [opp\\_ci/smoke]({URL}/matrix-runs/6): pending, 0/1 done, 1 running" in lines
    assert "| matrix | cell | status | duration | run |" in lines
    # Worst first: the failure leads the table, the pass comes last.
    assert table_rows(body) == [
        f"| inet\\-full | fingerprint/debug | ❌ failed | 2m 05s | [#11]({URL}/runs/11) |",
        f"| smoke | smoke | 🔄 running | — | [#12]({URL}/runs/12) |",
        f"| inet\\-full | smoke/release | ✅ passed | 3.1s | [#10]({URL}/runs/10) |",
    ]


@pytest.mark.parametrize(
    ("statuses", "headline"),
    [
        ([RunStatus.PASSED, RunStatus.PASSED], "### ✅ opp_ci: inet — success"),
        ([RunStatus.PASSED, RunStatus.FAILED, RunStatus.ERROR], "### ❌ opp_ci: inet — failure"),
        ([RunStatus.PASSED, RunStatus.CANCELLED], "### ⚠️ opp_ci: inet — error"),
        ([RunStatus.QUEUED], "### ⏳ opp_ci: inet — pending"),
    ],
)
def test_headline_is_the_aggregate_of_every_run(statuses, headline):
    body = render("inet", URL, "opp_ci", [(matrix_run(), [run(i, f"c{i}", s) for i, s in enumerate(statuses)])])
    assert body.splitlines()[1] == headline


def test_user_text_is_escaped():
    hostile = "a|b <script>x</script> `code` [link](http://evil) @octocat *bold*\nnext"
    body = render("inet", URL, "opp_ci", [(matrix_run(git_ref=hostile), [run(1, hostile, RunStatus.PASSED)])])
    [row] = table_rows(body)
    # The row still has its five cells: the pipe in the label did not open a sixth.
    assert len(re.split(r"(?<!\\)\|", row)) == 7
    assert "<script>" not in body
    assert "[link](http://evil)" not in body
    assert "@octocat" not in body and "@\u200boctocat" in body
    assert "\nnext" not in body and r"\*bold\* next" in body
    assert escape("a|b") == "a\\|b"
    assert escape("<!-- x -->") == "\\<\\!\\-\\- x \\-\\-\\>"


def test_marker_names_the_project():
    assert marker("inet-4.x") == "<!-- opp_ci:pr-comment:inet-4.x -->"


def test_a_long_table_is_cut_below_the_limit_saying_how_many_rows_were_left_out():
    label = "fingerprint/release/" + "x" * 120
    runs = [run(i, f"{label}{i}", RunStatus.PASSED, 1.0) for i in range(1, 1001)]
    runs[700].status = RunStatus.FAILED
    body = render("inet", URL, "opp_ci", [(matrix_run(), runs)])
    assert len(body) <= BODY_MAX
    rows = table_rows(body)
    left_out = 1000 - len(rows)
    assert 0 < left_out < 1000
    assert f"_{left_out} more rows left out to keep this comment under 65,536 characters" in body
    assert f"[#5]({URL}/matrix-runs/5)" in body.split("left out")[1]
    # The failure is kept although it is far down the list of runs.
    assert rows[0].startswith("| inet\\-full | fingerprint/release/") and "❌ failed" in rows[0]
    # As many rows as fit: one more would not.
    assert len(body) + len(rows[-1]) > BODY_MAX


def test_a_table_that_fits_is_not_cut():
    runs = [run(i, f"c{i}", RunStatus.PASSED) for i in range(1, 201)]
    body = render("inet", URL, "opp_ci", [(matrix_run(), runs)])
    assert len(table_rows(body)) == 200
    assert "left out" not in body


def test_the_cut_respects_a_smaller_limit_exactly():
    runs = [run(i, f"c{i}", RunStatus.PASSED) for i in range(1, 101)]
    full = render("inet", URL, "opp_ci", [(matrix_run(), runs)])
    for limit in (len(full) - 1, 2000, 1200):
        body = render("inet", URL, "opp_ci", [(matrix_run(), runs)], limit=limit)
        assert len(body) <= limit
        assert f"_{100 - len(table_rows(body))} more rows left out" in body


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "—"), (0, "0.0s"), (3.14, "3.1s"), (59.94, "59.9s"), (61, "1m 01s"), (3600, "1h 00m"), (7322, "2h 02m")]
)
def test_duration(seconds, text):
    assert duration(run(1, "c", RunStatus.PASSED, seconds)) == text


def test_duration_falls_back_to_the_wall_clock():
    r = run(1, "c", RunStatus.PASSED)
    r.started_at = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    r.finished_at = r.started_at + dt.timedelta(seconds=95)
    assert duration(r) == "1m 35s"
