"""Database tables, with opp_ci's own table and column names."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PATTERN_MAX_LENGTH = 255
NAME_MAX_LENGTH = 100


def utcnow() -> dt.datetime:
    """Timezone-aware now, the only clock the models use."""
    return dt.datetime.now(dt.timezone.utc)


class RuleType(enum.StrEnum):
    BRANCH = "branch"
    PR = "pr"
    TAG = "tag"


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class Role(enum.StrEnum):
    READONLY = "readonly"
    WORKER = "worker"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: "Role") -> bool:
        return self.rank >= needed.rank


class CallState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(cls, name=name, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e])


class UTCDateTime(TypeDecorator):
    """Timezone-aware datetimes on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        if value is not None and dialect.name == "sqlite":
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH), unique=True)
    github_owner: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    github_repo: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    installation_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    default_branch: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Bumped by database triggers whenever the project's rules or matrices change (migration 0002),
    # so the webhook's cached rule matcher knows when to rebuild.
    rules_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        Index(
            "uq_projects_github_owner_repo_lower",
            func.lower(github_owner),
            func.lower(github_repo),
            unique=True,
        ),
    )

    @property
    def full_name(self) -> str:
        return f"{self.github_owner}/{self.github_repo}"


class TestMatrix(Base):
    __tablename__ = "test_matrices"
    __test__ = False

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    project: Mapped[Project] = relationship(lazy="joined")


class AutoTestRule(Base):
    __tablename__ = "auto_test_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    rule_type: Mapped[RuleType] = mapped_column(_enum(RuleType, "rule_type"))
    pattern: Mapped[str] = mapped_column(String(PATTERN_MAX_LENGTH))
    # RESTRICT: a matrix that a rule uses cannot be deleted.
    matrix_id: Mapped[int | None] = mapped_column(
        ForeignKey("test_matrices.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    project: Mapped[Project] = relationship(lazy="joined")
    matrix: Mapped[TestMatrix | None] = relationship(lazy="joined")


class TestMatrixRun(Base):
    __tablename__ = "test_matrix_runs"
    __test__ = False

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("auto_test_rules.id", ondelete="SET NULL"), nullable=True)
    matrix_id: Mapped[int | None] = mapped_column(ForeignKey("test_matrices.id", ondelete="SET NULL"), nullable=True)
    # The matrix's name when queued ("smoke" without a matrix): the status context suffix.
    matrix_name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    trigger: Mapped[str] = mapped_column(String(20))  # push | pull_request | tag | manual
    git_ref: Mapped[str] = mapped_column(String(255))  # branch, tag or PR head branch name
    github_owner: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    github_repo: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    github_commit_sha: Mapped[str] = mapped_column(String(64))
    github_pr_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    github_status_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    delivery_guid: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # When GitHub says the head was made (head_commit.timestamp / pull_request.updated_at).
    event_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    # False for runs queued by `opp_ci rule test-webhook --queue`: GitHub is told nothing of them.
    report_to_github: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    project: Mapped[Project] = relationship(lazy="joined")
    runs: Mapped[list["TestRun"]] = relationship(back_populates="matrix_run", order_by="TestRun.id")

    __table_args__ = (
        Index("ix_test_matrix_runs_head", "project_id", "trigger", "git_ref"),
        Index("ix_test_matrix_runs_pr", "project_id", "github_pr_number"),
        Index("ix_test_matrix_runs_sha", "github_owner", "github_repo", "github_commit_sha"),
    )


class TestRun(Base):
    __tablename__ = "test_runs"
    __test__ = False

    id: Mapped[int] = mapped_column(primary_key=True)
    matrix_run_id: Mapped[int] = mapped_column(ForeignKey("test_matrix_runs.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    cell: Mapped[dict[str, Any]] = mapped_column(JSON)
    label: Mapped[str] = mapped_column(String(255))
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus, "run_status"), default=RunStatus.QUEUED)
    git_ref: Mapped[str] = mapped_column(String(255))
    github_owner: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    github_repo: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    github_commit_sha: Mapped[str] = mapped_column(String(64))
    github_pr_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    github_status_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH), nullable=True)
    reclaims: Mapped[int] = mapped_column(Integer, default=0)
    result_code: Mapped[str | None] = mapped_column(String(20), nullable=True)
    test_exec_seconds: Mapped[float | None] = mapped_column(nullable=True)
    stdout: Mapped[str | None] = mapped_column(Text, nullable=True)
    stderr: Mapped[str | None] = mapped_column(Text, nullable=True)
    details: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    matrix_run: Mapped[TestMatrixRun] = relationship(back_populates="runs")

    __table_args__ = (
        Index("ix_test_runs_status_id", "status", "id"),
        Index("ix_test_runs_project_commit", "project_id", "github_commit_sha"),
    )


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    guid: Mapped[str] = mapped_column(String(100), unique=True)
    event: Mapped[str] = mapped_column(String(50))
    action: Mapped[str | None] = mapped_column(String(50), nullable=True)
    repository: Mapped[str | None] = mapped_column(String(255), nullable=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"), nullable=True)
    ignored: Mapped[str | None] = mapped_column(String(500), nullable=True)
    runs_queued: Mapped[int] = mapped_column(Integer, default=0)
    matrix_run_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH), nullable=True)
    role: Mapped[Role] = mapped_column(_enum(Role, "token_role"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters, enough to recognise a token in `token list`.
    prefix: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)


class Installation(Base):
    __tablename__ = "installations"

    # GitHub's installation id.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    account_login: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    account_type: Mapped[str | None] = mapped_column(String(20), nullable=True)
    repositories: Mapped[list[Any]] = mapped_column(JSON, default=list)  # ["owner/repo", ...]
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class GitHubCall(Base):
    """One GitHub API call still to make (or made); drained by the sender."""

    __tablename__ = "github_calls"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))  # status | pr_comment | workflow_dispatch
    # Calls with the same key replace each other: only the newest pending one is sent.
    coalesce_key: Mapped[str] = mapped_column(String(500))
    github_owner: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    github_repo: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"), nullable=True)
    matrix_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("test_matrix_runs.id", ondelete="SET NULL"), nullable=True
    )
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[CallState] = mapped_column(_enum(CallState, "call_state"), default=CallState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    leased_until: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    __table_args__ = (
        Index("ix_github_calls_due", "state", "next_attempt_at"),
        Index("ix_github_calls_key_state", "coalesce_key", "state"),
    )


class PrComment(Base):
    """The sticky comment of one project on one PR, once its id is known."""

    __tablename__ = "pr_comments"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    github_owner: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    github_repo: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    github_pr_number: Mapped[int] = mapped_column(Integer)
    comment_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    body_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("project_id", "github_pr_number", name="uq_pr_comments_project_pr"),)
