"""Which matrix runs and cells an event queues, and writing them (with their GitHub statuses) in bulk."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import logging
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Iterable, Sequence

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import reporting
from .config import Settings
from .db import insert_processed
from .github.queue import enqueue_on
from .matching import RuleMatcher, ref_kind
from .matrix import Cell, MatrixError, expand
from .models import AutoTestRule, RuleType, RunStatus, TestMatrix, TestMatrixRun, TestRun, utcnow
from .statuses import NO_MATRIX_NAME, all_queued

log = logging.getLogger(__name__)

REF_MAX_LENGTH = 255
SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# The database keeps PR numbers in a 32-bit integer.
PR_NUMBER_MAX = 2**31 - 1


class Trigger(enum.StrEnum):
    PUSH = "push"
    TAG = "tag"
    PULL_REQUEST = "pull_request"


TRIGGER_OF_RULE_TYPE = {RuleType.BRANCH: Trigger.PUSH, RuleType.TAG: Trigger.TAG, RuleType.PR: Trigger.PULL_REQUEST}
RULE_TYPE_OF_TRIGGER = {trigger: rule_type for rule_type, trigger in TRIGGER_OF_RULE_TYPE.items()}


@dataclass(frozen=True)
class Head:
    """The commit an event is about: where it came from and when GitHub says it was made."""

    trigger: Trigger
    git_ref: str
    sha: str
    event_at: dt.datetime
    pr_number: int | None = None

    @property
    def rule_type(self) -> RuleType:
        return RULE_TYPE_OF_TRIGGER[self.trigger]


@dataclass(frozen=True)
class MatrixInfo:
    id: int | None
    name: str
    cells: tuple[Cell, ...]
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Worked out once per cached matrix, not once per queued run.
        object.__setattr__(self, "labels", tuple(cell.label for cell in self.cells))


@dataclass(frozen=True)
class PlannedMatrixRun:
    """One matrix run to queue: the matrix, its cells, and every rule that asked for it."""

    rule_ids: tuple[int, ...]
    matrix: MatrixInfo

    @property
    def rule_id(self) -> int:
        return self.rule_ids[0]


SMOKE = MatrixInfo(None, NO_MATRIX_NAME, tuple(expand(None)))


@dataclass
class ProjectRules:
    """A project's enabled rules compiled for matching, with their matrices expanded."""

    matchers: dict[RuleType, RuleMatcher]
    rule_matrix: dict[int, int | None]
    patterns: dict[int, str]
    matrices: dict[int, MatrixInfo]

    @classmethod
    def build(cls, rules: Iterable[tuple[int, RuleType, str, int | None]], matrices: Iterable[tuple[int, str, Any]]):
        """From (id, rule_type, pattern, matrix_id) of enabled rules and (id, name, config) of matrices."""
        expanded: dict[int, MatrixInfo] = {}
        for matrix_id, name, config in matrices:
            try:
                expanded[matrix_id] = MatrixInfo(matrix_id, name, tuple(expand(config)))
            except MatrixError as exc:
                log.warning("matrix %s cannot be expanded, its rules are skipped: %s", name, exc)
        by_type: dict[RuleType, list[tuple[int, str]]] = {t: [] for t in RuleType}
        rule_matrix: dict[int, int | None] = {}
        patterns: dict[int, str] = {}
        for rule_id, rule_type, pattern, matrix_id in rules:
            if matrix_id is not None and matrix_id not in expanded:
                continue
            by_type[RuleType(rule_type)].append((rule_id, pattern))
            rule_matrix[rule_id] = matrix_id
            patterns[rule_id] = pattern
        return cls({t: RuleMatcher(r) for t, r in by_type.items()}, rule_matrix, patterns, expanded)

    def plan(self, rule_type: RuleType, name: str) -> list[PlannedMatrixRun]:
        """The matrix runs `name` queues: one per matrix named by a matching rule, in rule order."""
        grouped: dict[int | None, list[int]] = {}
        for rule_id in self.matchers[rule_type].match(name):
            grouped.setdefault(self.rule_matrix[rule_id], []).append(rule_id)
        return [
            PlannedMatrixRun(tuple(ids), SMOKE if matrix_id is None else self.matrices[matrix_id])
            for matrix_id, ids in grouped.items()
        ]


def load_project_rules(connection: Connection, project_id: int) -> ProjectRules:
    """Read a project's enabled rules and its matrices."""
    rules = connection.execute(
        select(AutoTestRule.id, AutoTestRule.rule_type, AutoTestRule.pattern, AutoTestRule.matrix_id)
        .where(AutoTestRule.project_id == project_id, AutoTestRule.enabled.is_(True))
        .order_by(AutoTestRule.id)
    )
    matrices = connection.execute(
        select(TestMatrix.id, TestMatrix.name, TestMatrix.config).where(TestMatrix.project_id == project_id)
    )
    return ProjectRules.build(rules.all(), matrices.all())


def parse_timestamp(value: Any) -> dt.datetime | None:
    """An ISO 8601 timestamp as an aware datetime, or None when absent or unparseable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def status_url(settings: Settings, owner: str, repo: str, sha: str) -> str:
    """GitHub's statuses API URL of a commit."""
    return f"{settings.github_base_url}/repos/{owner}/{repo}/statuses/{sha}"


@dataclass
class Queued:
    """What queuing did: the new matrix runs, how many runs, and which older matrix runs were cancelled."""

    matrix_run_ids: list[int] = field(default_factory=list)
    runs_queued: int = 0
    cancelled_matrix_run_ids: list[int] = field(default_factory=list)


def _same_head(project_id: int, head: Head) -> list:
    where = [TestMatrixRun.project_id == project_id, TestMatrixRun.trigger == head.trigger.value]
    if head.trigger is Trigger.PULL_REQUEST:
        where.append(TestMatrixRun.github_pr_number == head.pr_number)
    else:
        where.append(TestMatrixRun.git_ref == head.git_ref)
    return where


async def superseded(session: AsyncSession, project_id: int, head: Head, rule_ids: Sequence[int]) -> list[int]:
    """Unfinished older matrix runs of the same rules and branch (or PR); none when `head` is older than the newest seen."""
    same_head = _same_head(project_id, head)
    newest = select(func.max(TestMatrixRun.event_at)).where(*same_head).scalar_subquery()
    rows = (
        await session.execute(
            select(TestMatrixRun.id, newest).where(
                *same_head, TestMatrixRun.finished_at.is_(None), TestMatrixRun.rule_id.in_(rule_ids)
            )
        )
    ).all()
    if not rows:
        return []
    newest_seen = rows[0][1]
    if newest_seen is not None and head.event_at < newest_seen:
        return []
    return [row[0] for row in rows]


async def cancel_queued(session: AsyncSession, settings: Settings, matrix_run_ids: Sequence[int]) -> list[int]:
    """Cancel the still-queued runs of these matrix runs and queue their statuses; the matrix runs touched."""
    if not matrix_run_ids:
        return []
    now = utcnow()
    result = await session.execute(
        update(TestRun)
        .where(TestRun.matrix_run_id.in_(matrix_run_ids), TestRun.status == RunStatus.QUEUED)
        .values(status=RunStatus.CANCELLED, finished_at=now)
        .returning(TestRun.matrix_run_id)
        .execution_options(synchronize_session=False)
    )
    touched = sorted(set(result.scalars()))
    await reporting.update_github_status(session, settings, touched)
    return touched


async def cancel_head(session: AsyncSession, settings: Settings, project_id: int, head: Head) -> list[int]:
    """Cancel the queued runs of every unfinished matrix run of a branch, tag or PR (deleted or closed)."""
    await lock_heads(session, [head_key(project_id, head)])
    ids = list(
        await session.scalars(
            select(TestMatrixRun.id).where(*_same_head(project_id, head), TestMatrixRun.finished_at.is_(None))
        )
    )
    return await cancel_queued(session, settings, ids)


@dataclass(frozen=True)
class QueueItem:
    """Matrix runs to queue for one delivery."""

    project_id: int
    owner: str
    repo: str
    head: Head
    planned: Sequence[PlannedMatrixRun]
    delivery_guid: str
    # False for `opp_ci rule test-webhook --queue`: queue the runs, tell GitHub nothing, cancel nothing.
    report_to_github: bool = True


def head_key(project_id: int, head: Head) -> tuple[int, str, str | int | None]:
    """What superseding compares: the project and the branch or tag, or the PR number."""
    if head.trigger is Trigger.PULL_REQUEST:
        return project_id, head.trigger.value, head.pr_number
    return project_id, head.trigger.value, head.git_ref


def _lock_id(key: tuple) -> int:
    """A stable signed 64-bit advisory lock id for one head."""
    digest = hashlib.sha256(f"opp_ci:head:{key!r}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def lock_heads(session: AsyncSession, keys: Iterable[tuple]) -> None:
    """On PostgreSQL, serialize transactions queuing or cancelling on the same heads (held until commit).

    Another transaction (another writer or app process) working on one of these heads
    then commits first, and what it queued is seen here and superseded. SQLite has one
    writer at a time already.
    """
    if session.bind.dialect.name != "postgresql":
        return
    for lock_id in sorted({_lock_id(k) for k in keys}):
        await session.execute(select(func.pg_advisory_xact_lock(lock_id)))


# Plain IN lists on each column (not row values) so that SQLite uses the head index; built once.
_UNFINISHED_REFS = (
    select(TestMatrixRun.project_id, TestMatrixRun.trigger, TestMatrixRun.git_ref)
    .where(
        TestMatrixRun.finished_at.is_(None),
        TestMatrixRun.project_id.in_(bindparam("projects", expanding=True)),
        TestMatrixRun.trigger.in_(bindparam("triggers", expanding=True)),
        TestMatrixRun.git_ref.in_(bindparam("refs", expanding=True)),
    )
    .distinct()
)
_UNFINISHED_PRS = (
    select(TestMatrixRun.project_id, TestMatrixRun.github_pr_number)
    .where(
        TestMatrixRun.finished_at.is_(None),
        TestMatrixRun.project_id.in_(bindparam("projects", expanding=True)),
        TestMatrixRun.github_pr_number.in_(bindparam("numbers", expanding=True)),
    )
    .distinct()
)


def unfinished_heads(connection: Connection, items: Iterable[tuple[int, Head]]) -> set[tuple]:
    """Which of these heads already have an unfinished matrix run (so queuing there may supersede)."""
    items = list(items)
    refs = {(p, h.trigger.value, h.git_ref) for p, h in items if h.trigger is not Trigger.PULL_REQUEST}
    prs = {(p, h.pr_number) for p, h in items if h.trigger is Trigger.PULL_REQUEST}
    found: set[tuple] = set()
    if refs:
        rows = connection.execute(_UNFINISHED_REFS, {
            "projects": list({r[0] for r in refs}), "triggers": list({r[1] for r in refs}), "refs": list({r[2] for r in refs})
        })
        found.update(row for row in map(tuple, rows) if row in refs)
    if prs:
        rows = connection.execute(_UNFINISHED_PRS, {"projects": list({p for p, _ in prs}), "numbers": list({n for _, n in prs})})
        found.update((p, Trigger.PULL_REQUEST.value, n) for p, n in rows if (p, n) in prs)
    return found


_MATRIX_RUNS = TestMatrixRun.__table__
# Built once: SQLAlchemy then finds it compiled without rebuilding it.
_INSERT_MATRIX_RUNS = insert(_MATRIX_RUNS).returning(_MATRIX_RUNS.c.id, _MATRIX_RUNS.c.delivery_guid, _MATRIX_RUNS.c.matrix_name)


async def insert_matrix_runs(session: AsyncSession, settings: Settings, items: Sequence[QueueItem]) -> list[Queued]:
    """Insert matrix runs, their runs and pending statuses for several deliveries at once (no superseding)."""
    if not items:
        return []
    await session.flush()  # as session.execute would: pending ORM changes go first
    queued, pr_matrix_runs = await (await session.connection()).run_sync(insert_matrix_runs_on, settings, items)
    # A PR's runs also update its comment; the full path reads the runs back, which pushes need not.
    await reporting.update_github_status(session, settings, pr_matrix_runs)
    return queued


def insert_matrix_runs_on(connection: Connection, settings: Settings, items: Sequence[QueueItem]) -> tuple[list[Queued], list[int]]:
    """`insert_matrix_runs` on a synchronous connection, short of PR comments: (queued, PR matrix runs to report)."""
    now = utcnow()
    matrix_rows: list[dict[str, Any]] = []
    owners: list[tuple[QueueItem, PlannedMatrixRun]] = []
    for item in items:
        head = item.head
        common = {
            "project_id": item.project_id,
            "github_owner": item.owner,
            "github_repo": item.repo,
            "github_commit_sha": head.sha,
            "github_pr_number": head.pr_number,
            "github_status_url": status_url(settings, item.owner, item.repo, head.sha),
            "git_ref": head.git_ref,
            "created_at": now,
        }
        for planned in item.planned:
            matrix_rows.append(
                {
                    **common,
                    "rule_id": planned.rule_id,
                    "matrix_id": planned.matrix.id,
                    "matrix_name": planned.matrix.name,
                    "trigger": head.trigger.value,
                    "delivery_guid": item.delivery_guid,
                    "event_at": head.event_at,
                    "finished_at": None,
                    "report_to_github": item.report_to_github,
                }
            )
            owners.append((item, planned))
    if not matrix_rows:
        return [Queued() for _ in items], []
    # Matched back by (delivery, matrix name), unique per row: asking SQLAlchemy to keep the
    # parameter order would make it insert one row per statement on SQLite.
    returned = connection.execute(_INSERT_MATRIX_RUNS, matrix_rows)
    id_of = {(guid, name): matrix_run_id for matrix_run_id, guid, name in returned}
    ids = [id_of[row["delivery_guid"], row["matrix_name"]] for row in matrix_rows]
    run_columns = ("project_id", "github_owner", "github_repo", "github_commit_sha", "github_pr_number",
                   "github_status_url", "git_ref", "created_at")
    run_rows = []
    calls = []
    pr_matrix_runs: list[int] = []
    queued: dict[int, Queued] = {id(item): Queued() for item in items}
    for matrix_run_id, row, (item, planned) in zip(ids, matrix_rows, owners):
        base = {k: row[k] for k in run_columns}
        run_rows.extend(
            {**base, "matrix_run_id": matrix_run_id, "cell": cell.values, "label": label,
             "status": RunStatus.QUEUED, "reclaims": 0}
            for cell, label in zip(planned.matrix.cells, planned.matrix.labels)
        )
        if not item.report_to_github:
            pass
        elif item.head.pr_number is None:
            # status_call only reads these attributes; a plain object is cheaper than an ORM instance.
            matrix_run = SimpleNamespace(id=matrix_run_id, **row)
            calls.append(reporting.aggregated_status_call(settings, matrix_run, *all_queued(len(planned.matrix.cells))))
        else:
            pr_matrix_runs.append(matrix_run_id)
        result = queued[id(item)]
        result.matrix_run_ids.append(matrix_run_id)
        result.runs_queued += len(planned.matrix.cells)
    insert_processed(connection, TestRun.__table__, run_rows)
    enqueue_on(connection, calls)
    return [queued[id(item)] for item in items], pr_matrix_runs


async def queue_matrix_runs(session: AsyncSession, settings: Settings, item: QueueItem) -> Queued:
    """Cancel what the new head supersedes, then insert the matrix runs, their runs and pending statuses."""
    if not item.planned:
        return Queued()
    if not item.report_to_github:
        (queued,) = await insert_matrix_runs(session, settings, [item])
        return queued
    rule_ids = sorted({rule_id for p in item.planned for rule_id in p.rule_ids})
    await lock_heads(session, [head_key(item.project_id, item.head)])
    older = await superseded(session, item.project_id, item.head, rule_ids)
    # Cancel first: a final status of an older run on the same commit must not replace the new pending one.
    cancelled = await cancel_queued(session, settings, older)
    (queued,) = await insert_matrix_runs(session, settings, [item])
    queued.cancelled_matrix_run_ids = cancelled
    return queued


# Reading the untrusted payload


class BadPayload(ValueError):
    """A payload field is missing or of the wrong type; the delivery is answered 400 and not recorded."""


_TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object", bool: "true or false", list: "a list"}


def field(data: Any, *path: str, kind: type = str, required: bool = True) -> Any:
    """`data[path[0]][path[1]]...` checked to be of `kind`; None when absent and not `required`."""
    value = data
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    dotted = ".".join(path)
    if value is None:
        if required:
            raise BadPayload(f"payload has no {dotted}")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadPayload(f"payload field {dotted} must be {_TYPE_NAMES.get(kind, kind.__name__)}")
    if kind is str and "\x00" in value:
        raise BadPayload(f"payload field {dotted} contains a NUL character")
    if kind is int and not -(2**63) <= value < 2**63:
        raise BadPayload(f"payload field {dotted} is out of range")
    return value


def _sha(data: Any, *path: str) -> str:
    sha = field(data, *path)
    if not SHA_RE.fullmatch(sha):
        raise BadPayload(f"payload field {'.'.join(path)} is not a commit id (40 or 64 hex digits)")
    return sha


def _check_ref(name: str, path: str) -> str:
    if not name or len(name) > REF_MAX_LENGTH:
        raise BadPayload(f"payload field {path} must be 1 to {REF_MAX_LENGTH} characters")
    if CONTROL_RE.search(name):
        raise BadPayload(f"payload field {path} contains control characters, which git refs cannot")
    return name


def _pr_number(data: Any, *path: str) -> int:
    number = field(data, *path, kind=int)
    if not 0 < number <= PR_NUMBER_MAX:
        raise BadPayload(f"payload field {'.'.join(path)} is not a pull request number")
    return number


def repository_of(data: Any) -> tuple[str, str] | None:
    """(owner, repo) of the payload's repository: owner login, or `name` as push payloads also have."""
    if field(data, "repository", kind=dict, required=False) is None:
        return None
    repo = field(data, "repository", "name")
    owner = field(data, "repository", "owner", "login", required=False) or field(
        data, "repository", "owner", "name", required=False
    )
    if owner is None:
        full_name = field(data, "repository", "full_name")
        owner, _, _ = full_name.partition("/")
    return owner, repo


@dataclass(frozen=True)
class Push:
    ref: str
    rule_type: RuleType | None
    name: str
    deleted: bool
    message: str | None
    head: Head | None


def parse_push(data: Any) -> Push:
    """The parts of a push payload that matter."""
    ref = field(data, "ref")
    rule_type, name = ref_kind(ref)
    _check_ref(name, "ref")
    deleted = bool(field(data, "deleted", kind=bool, required=False))
    if rule_type is None or deleted:
        trigger = TRIGGER_OF_RULE_TYPE[rule_type] if rule_type else Trigger.PUSH
        return Push(ref, rule_type, name, deleted, None, Head(trigger, name, "", utcnow()))
    message = field(data, "head_commit", "message", required=False)
    event_at = parse_timestamp(field(data, "head_commit", "timestamp", required=False)) or utcnow()
    head = Head(TRIGGER_OF_RULE_TYPE[rule_type], name, _sha(data, "after"), event_at)
    return Push(ref, rule_type, name, deleted, message, head)


def parse_pull_request(data: Any) -> Head:
    """The PR head: `pull_request.head.ref` and `.sha`, the number, and `updated_at`."""
    if field(data, "number", kind=int, required=False) is not None:
        number = _pr_number(data, "number")
    else:
        number = _pr_number(data, "pull_request", "number")
    ref = _check_ref(field(data, "pull_request", "head", "ref"), "pull_request.head.ref")
    sha = _sha(data, "pull_request", "head", "sha")
    event_at = parse_timestamp(field(data, "pull_request", "updated_at", required=False)) or utcnow()
    return Head(Trigger.PULL_REQUEST, ref, sha, event_at, pr_number=number)
