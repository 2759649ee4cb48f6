"""Putting GitHub calls on the durable queue, inside the caller's transaction."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..db import insert_processed
from ..models import CallState, GitHubCall, utcnow


CALLS = GitHubCall.__table__
# Built once: SQLAlchemy then finds them compiled without rebuilding them.
SUPERSEDE_PENDING = (
    update(CALLS)
    .where(CALLS.c.coalesce_key.in_(bindparam("keys", expanding=True)), CALLS.c.state == CallState.PENDING)
    .values(state=CallState.SUPERSEDED)
)
# Keys per superseding UPDATE at most.
KEYS_PER_UPDATE = 500


class CallKind(enum.StrEnum):
    STATUS = "status"
    PR_COMMENT = "pr_comment"
    WORKFLOW_DISPATCH = "workflow_dispatch"


@dataclass
class Call:
    """One GitHub call to make later; calls with the same `coalesce_key` replace each other."""

    kind: str
    coalesce_key: str
    github_owner: str
    github_repo: str
    payload: dict[str, Any]
    project_id: int | None = None
    matrix_run_id: int | None = None


def status_key(owner: str, repo: str, sha: str, context: str) -> str:
    return f"status:{owner.lower()}/{repo.lower()}:{sha}:{context}"


def pr_comment_key(owner: str, repo: str, pr_number: int, project_id: int) -> str:
    return f"pr_comment:{owner.lower()}/{repo.lower()}#{pr_number}:{project_id}"


def dispatch_key(owner: str, repo: str) -> str:
    return f"workflow_dispatch:{owner.lower()}/{repo.lower()}"


async def enqueue(session: AsyncSession, calls: list[Call]) -> None:
    """Queue `calls` in the session's transaction; older pending calls with the same key are superseded (never sent)."""
    if calls:
        await session.flush()  # as session.execute would: pending ORM changes go first
        await (await session.connection()).run_sync(enqueue_on, calls)


def enqueue_on(connection: Connection, calls: list[Call]) -> None:
    """`enqueue` on a synchronous connection (the SQLite ingest's writer thread)."""
    if not calls:
        return
    # Keep only the newest call per key within this batch as well.
    newest: dict[str, Call] = {}
    for call in calls:
        newest[call.coalesce_key] = call
    keys = list(newest)
    now = utcnow()
    for start in range(0, len(keys), KEYS_PER_UPDATE):
        connection.execute(SUPERSEDE_PENDING, {"keys": keys[start : start + KEYS_PER_UPDATE]})
    insert_processed(
        connection,
        CALLS,
        [
            {
                "kind": c.kind,
                "coalesce_key": c.coalesce_key,
                "github_owner": c.github_owner,
                "github_repo": c.github_repo,
                "payload": c.payload,
                "project_id": c.project_id,
                "matrix_run_id": c.matrix_run_id,
                "state": CallState.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for c in newest.values()
        ],
    )
