"""`opp_ci rule test-webhook`: run a payload GitHub would send through the real router."""

from __future__ import annotations

import re
import uuid
from typing import Any

import click
from gidgethub import sansio
from sqlalchemy.ext.asyncio import AsyncSession

from . import catalog, ingest
from .matching import BRANCH_PREFIX, TAG_PREFIX
from .models import utcnow

DRY_RUN_SHA = "0" * 40
DRY_RUN_PR_NUMBER = 1
SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
GUID_PREFIX = "test-webhook-"
EVENTS = {"push": "push", "tag": "push", "pr": "pull_request"}
MESSAGE = "opp_ci rule test-webhook"


class BadRef(ValueError):
    """--ref does not fit --type."""


def normalise_ref(kind: str, ref: str) -> str:
    """The branch or tag name; `refs/heads/` (push) and `refs/tags/` (tag) prefixes are accepted."""
    ref = ref.strip()
    other = {"push": TAG_PREFIX, "tag": BRANCH_PREFIX}.get(kind)
    own = {"push": BRANCH_PREFIX, "tag": TAG_PREFIX}.get(kind)
    if other and ref.startswith(other):
        raise BadRef(f"--ref {ref} is not a {'branch' if kind == 'push' else 'tag'}; use --type {'tag' if kind == 'push' else 'push'}")
    if own and ref.startswith(own):
        ref = ref[len(own) :]
    if not ref:
        raise BadRef("--ref must name a branch, tag or PR head branch")
    return ref


def build_payload(kind: str, ref: str, sha: str, pr_number: int | None, owner: str, repo: str) -> dict[str, Any]:
    """The payload GitHub would send for a push (`push`, `tag`) or a synchronized PR (`pr`)."""
    now = utcnow().isoformat()
    repository = {"name": repo, "full_name": f"{owner}/{repo}", "owner": {"name": owner, "login": owner}}
    if kind == "pr":
        return {
            "action": "synchronize",
            "number": pr_number,
            "pull_request": {
                "number": pr_number,
                "state": "open",
                "updated_at": now,
                "head": {"ref": ref, "sha": sha, "repo": repository},
                "base": {"ref": "master", "repo": repository},
            },
            "repository": repository,
        }
    return {
        "ref": f"{TAG_PREFIX if kind == 'tag' else BRANCH_PREFIX}{ref}",
        "before": "0" * 40,
        "after": sha,
        "created": False,
        "deleted": False,
        "forced": False,
        "repository": repository,
        "head_commit": {"id": sha, "message": MESSAGE, "timestamp": now},
    }


def describe(delivery: ingest.Delivery) -> list[str]:
    """One line per matrix run the delivery queues (or would queue)."""
    lines = []
    for planned in delivery.planned:
        rules = ", ".join(f"rule {i} ({p!r})" for i, p in zip(planned.rule_ids, planned.patterns))
        lines.append(f"{rules} -> {planned.matrix_name}, {len(planned.labels)} run(s): {', '.join(planned.labels)}")
    return lines


@click.command("test-webhook")
@click.option("--project", "project_name", required=True, help="Project name.")
@click.option("--type", "kind", required=True, type=click.Choice(list(EVENTS)), help="A branch push, a tag push, or a PR.")
@click.option("--ref", required=True, help="Branch or tag name (refs/heads/... and refs/tags/... work too); for pr, the PR's head branch.")
@click.option("--sha", default=None, help="Commit id, 40 hex digits [needed with --queue].")
@click.option("--pr-number", type=click.IntRange(1, 2**31 - 1), default=None, help="PR number [needed with --type pr --queue].")
@click.option("--queue", "do_queue", is_flag=True, help="Really queue the runs for workers; GitHub is told nothing of them.")
def test_webhook(project_name: str, kind: str, ref: str, sha: str | None, pr_number: int | None, do_queue: bool) -> None:
    """Show (or queue) what a push, tag or PR would trigger.

    Builds the payload GitHub would send and runs it through the same router and
    rule matching as the webhook. Without --queue nothing changes. With --queue
    the runs are queued for workers, but no status, comment or note is ever sent
    to GitHub for them and no other run is superseded.

    Example: opp_ci rule test-webhook --project inet --type push --ref master
    """
    # Imported here: cli.py imports this module while it is being loaded.
    from .cli import Failure, run_in_session, settings_from_env

    try:
        ref = normalise_ref(kind, ref)
    except BadRef as exc:
        raise Failure(str(exc)) from None
    if kind == "pr" and pr_number is None and do_queue:
        raise Failure("--type pr --queue needs --pr-number N")
    if sha is not None:
        sha = sha.strip().lower()
        if not SHA_RE.match(sha):
            raise Failure(f"--sha must be a full commit id (40 hex digits), got {sha!r}")
    elif do_queue:
        raise Failure("--queue needs --sha: the commit the runs test and GitHub shows statuses on")
    settings = settings_from_env()

    async def work(session: AsyncSession) -> tuple[Any, ingest.Delivery]:
        project = await catalog.get_project(session, project_name, "project")
        data = build_payload(kind, ref, sha or DRY_RUN_SHA, pr_number or DRY_RUN_PR_NUMBER, project.github_owner, project.github_repo)
        event = sansio.Event(data, event=EVENTS[kind], delivery_id=f"{GUID_PREFIX}{uuid.uuid4()}")
        delivery = await ingest.handle(
            session, settings, ingest.RulesCache(), event, planning_only=not do_queue, report_to_github=False
        )
        if do_queue:
            await ingest.record(session, [delivery])
        return project, delivery

    project, delivery = run_in_session(work, commit=do_queue)
    what = {"push": "push to branch", "tag": "push of tag", "pr": f"PR #{pr_number} from branch" if pr_number else "a PR from branch"}[kind]
    click.echo(f"{what} {ref!r} of {project.full_name} (project {project.name}):")
    for line in describe(delivery):
        click.echo(f"  {line}")
    if not delivery.planned:
        click.echo(f"  {delivery.ignored or 'nothing would be queued'}")
    elif not do_queue:
        click.echo("dry run: nothing was queued (add --queue --sha SHA to queue these runs)")
    else:
        ids = ", ".join(str(i) for i in delivery.matrix_run_ids)
        click.echo(f"queued {delivery.runs_queued} run(s) in matrix run(s) {ids} (delivery {delivery.guid})")
        if superseded := delivery.reply.get("superseded_matrix_runs"):
            click.echo(f"cancelled the queued runs of older matrix run(s) {', '.join(map(str, superseded))}")
