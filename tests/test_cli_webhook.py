"""`opp_ci rule test-webhook`: what a push, tag or PR would queue, dry run and --queue."""

import pytest
from sqlalchemy import func, select

from opp_ci_app.cli_webhook import BadRef, build_payload, normalise_ref
from opp_ci_app.models import GitHubCall, RunStatus, TestMatrixRun, TestRun, WebhookDelivery
from tests.conftest import run_in_thread

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def inet(opp_ci):
    assert opp_ci("project", "create", "--name", "inet", "--github", "inet-framework/inet")[0] == 0
    assert opp_ci("matrix", "create", "--project", "inet", "--name", "inet-full", "--axis", "kind=smoke,fingerprint",
                  "--axis", "mode=release,debug", "--exclude", "kind=smoke,mode=debug")[0] == 0
    for args in (("branch", "master", "inet-full"), ("branch", "*", "inet-full"), ("tag", "v6.*", None), ("pr", "topic/*", None)):
        extra = ("--matrix", args[2]) if args[2] else ()
        assert opp_ci("rule", "create", "--project", "inet", "--type", args[0], "--pattern", args[1], *extra)[0] == 0
    return opp_ci


def counts(database_url):
    from opp_ci_app.db import create_engine

    async def read():
        engine = create_engine(database_url)
        async with engine.connect() as conn:
            result = {m.__tablename__: await conn.scalar(select(func.count()).select_from(m))
                      for m in (WebhookDelivery, TestMatrixRun, TestRun, GitHubCall)}
        await engine.dispose()
        return result

    return run_in_thread(read)


def test_dry_run_prints_matching_rules_and_cells_and_changes_nothing(inet, database_url):
    code, out, err = inet("rule", "test-webhook", "--project", "inet", "--type", "push", "--ref", "master")
    assert code == 0, err
    assert out.splitlines() == [
        "push to branch 'master' of inet-framework/inet (project inet):",
        "  rule 1 ('master'), rule 2 ('*') -> inet-full, 3 run(s): smoke/release, fingerprint/release, fingerprint/debug",
        "dry run: nothing was queued (add --queue --sha SHA to queue these runs)",
    ]
    assert counts(database_url) == {"webhook_deliveries": 0, "test_matrix_runs": 0, "test_runs": 0, "github_calls": 0}


def test_dry_run_tag_and_pr(inet):
    code, out, _ = inet("rule", "test-webhook", "--project", "inet", "--type", "tag", "--ref", "refs/tags/v6.1.0")
    assert code == 0 and "  rule 3 ('v6.*') -> smoke, 1 run(s): smoke" in out
    code, out, _ = inet("rule", "test-webhook", "--project", "inet", "--type", "pr", "--ref", "topic/a/b", "--pr-number", "5")
    assert code == 0 and out.startswith("PR #5 from branch 'topic/a/b'") and "rule 4 ('topic/*')" in out


def test_nothing_matches(inet):
    code, out, _ = inet("rule", "test-webhook", "--project", "inet", "--type", "tag", "--ref", "v7.0")
    assert code == 0 and "  no enabled tag rule matches 'v7.0'" in out


def test_queue_queues_runs_and_tells_github_nothing(inet, database_url):
    code, out, err = inet("rule", "test-webhook", "--project", "inet", "--type", "push", "--ref", "master", "--sha", SHA, "--queue")
    assert code == 0, err
    assert "queued 3 run(s) in matrix run(s) 1 (delivery test-webhook-" in out
    assert counts(database_url) == {"webhook_deliveries": 1, "test_matrix_runs": 1, "test_runs": 3, "github_calls": 0}
    # A second test on the same branch supersedes nothing: it is a test, not a push.
    code, out, _ = inet("rule", "test-webhook", "--project", "inet", "--type", "push", "--ref", "master", "--sha", "f" * 40, "--queue")
    assert code == 0 and "cancelled" not in out
    code, out, _ = inet("rule", "test-webhook", "--project", "inet", "--type", "pr", "--ref", "topic/x", "--sha", SHA,
                        "--pr-number", "7", "--queue")
    assert code == 0, out

    from opp_ci_app.db import create_engine

    async def rows():
        engine = create_engine(database_url)
        async with engine.connect() as conn:
            statuses = (await conn.execute(select(TestRun.status))).scalars().all()
            flags = (await conn.execute(select(TestMatrixRun.report_to_github))).scalars().all()
        await engine.dispose()
        return statuses, flags

    statuses, flags = run_in_thread(rows)
    assert statuses == [RunStatus.QUEUED] * 7 and flags == [False, False, False]
    assert counts(database_url)["github_calls"] == 0


def test_dry_run_of_a_pr_needs_no_number(inet, database_url):
    code, out, err = inet("rule", "test-webhook", "--project", "inet", "--type", "pr", "--ref", "topic/x")
    assert code == 0, err
    assert out.startswith("a PR from branch 'topic/x' of inet-framework/inet (project inet):")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--project", "nope", "--type", "push", "--ref", "master"), "no project named 'nope'"),
        (("--project", "inet", "--type", "pr", "--ref", "x", "--sha", "a" * 40, "--queue"), "--type pr --queue needs --pr-number N"),
        (("--project", "inet", "--type", "push", "--ref", "x", "--queue"), "--queue needs --sha"),
        (("--project", "inet", "--type", "push", "--ref", "x", "--sha", "xyz"), "--sha must be a full commit id"),
        (("--project", "inet", "--type", "push", "--ref", "refs/tags/v1"), "--ref refs/tags/v1 is not a branch; use --type tag"),
        (("--project", "inet", "--type", "branch", "--ref", "x"), "Invalid value for '--type'"),
        (("--project", "inet", "--type", "pr", "--ref", "x", "--pr-number", "0"), "--pr-number"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(inet, args, message):
    code, out, err = inet("rule", "test-webhook", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_help(opp_ci):
    code, out, _ = opp_ci("rule", "test-webhook", "--help")
    assert code == 0 and "--pr-number" in out and "--queue" in out


def test_built_payloads_look_like_githubs():
    push = build_payload("push", "topic/x", SHA, None, "inet-framework", "inet")
    assert (push["ref"], push["after"], push["head_commit"]["id"], push["repository"]["owner"]["login"]) == (
        "refs/heads/topic/x", SHA, SHA, "inet-framework")
    assert build_payload("tag", "v6.1", SHA, None, "o", "r")["ref"] == "refs/tags/v6.1"
    pr = build_payload("pr", "topic/x", SHA, 9, "o", "r")
    assert (pr["action"], pr["number"], pr["pull_request"]["head"]["ref"], pr["pull_request"]["head"]["sha"]) == (
        "synchronize", 9, "topic/x", SHA)


def test_normalise_ref():
    assert normalise_ref("push", "refs/heads/a/b") == "a/b"
    assert normalise_ref("tag", "refs/tags/v1") == "v1"
    assert normalise_ref("pr", "refs/heads/x") == "refs/heads/x"
    with pytest.raises(BadRef):
        normalise_ref("tag", "refs/heads/x")
    with pytest.raises(BadRef):
        normalise_ref("push", "  ")
