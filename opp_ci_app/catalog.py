"""Projects, matrices and rules: the operations the CLI, REST API and web pages share."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .matrix import MatrixError, expand, validate_config
from .models import NAME_MAX_LENGTH, PATTERN_MAX_LENGTH, AutoTestRule, Project, RuleType, TestMatrix

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
GITHUB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class CatalogError(Exception):
    """A request the catalog refuses; `status` is the HTTP answer, `field` the culprit."""

    status = 422

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(CatalogError):
    status = 404


class Invalid(CatalogError):
    status = 422


class Conflict(CatalogError):
    status = 409


def _check_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{field} must be a non-empty string", field)
    value = value.strip()
    if len(value) > NAME_MAX_LENGTH:
        raise Invalid(f"{field} is longer than {NAME_MAX_LENGTH} characters", field)
    if not NAME_RE.match(value):
        raise Invalid(f"{field} may contain only letters, digits, '.', '_' and '-'", field)
    return value


def parse_github_repo(value: Any, field: str = "github") -> tuple[str, str]:
    """`owner/repo` -> (owner, repo), refusing anything GitHub would not accept."""
    if not isinstance(value, str):
        raise Invalid(f"{field} must be OWNER/REPO", field)
    owner, sep, repo = value.strip().partition("/")
    if not sep or not GITHUB_NAME_RE.match(owner) or not GITHUB_NAME_RE.match(repo):
        raise Invalid(f"{field} must be OWNER/REPO, got {value!r}", field)
    return owner, repo


# Projects


async def create_project(session: AsyncSession, name: Any, github_owner: Any, github_repo: Any) -> Project:
    name = _check_name(name, "name")
    owner, repo = parse_github_repo(f"{github_owner}/{github_repo}" if github_owner and github_repo else None)
    if await session.scalar(select(Project.id).where(Project.name == name)):
        raise Conflict(f"a project named {name!r} already exists", "name")
    taken = await session.scalar(
        select(Project.name).where(
            func.lower(Project.github_owner) == owner.lower(), func.lower(Project.github_repo) == repo.lower()
        )
    )
    if taken:
        raise Conflict(f"{owner}/{repo} already belongs to project {taken!r}", "github")
    project = Project(name=name, github_owner=owner, github_repo=repo)
    session.add(project)
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(f"project {name!r} or repository {owner}/{repo} already exists", "name") from None
    return project


def _check_lookup(name: Any, field: str) -> str:
    """A name to look up: a non-empty string without control characters (PostgreSQL refuses NUL)."""
    if not isinstance(name, str) or not name:
        raise Invalid(f"{field} must be a non-empty string", field)
    if CONTROL_RE.search(name):
        raise Invalid(f"{field} must not contain control characters", field)
    return name


async def get_project(session: AsyncSession, name: Any, field: str = "project_name") -> Project:
    _check_lookup(name, field)
    project = await session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFound(f"no project named {name!r}", field)
    return project


async def find_project_by_repo(session: AsyncSession, owner: str, repo: str) -> Project | None:
    """The project of a GitHub repository, matched regardless of letter case."""
    return await session.scalar(
        select(Project).where(
            func.lower(Project.github_owner) == owner.lower(), func.lower(Project.github_repo) == repo.lower()
        )
    )


async def list_projects(session: AsyncSession) -> list[Project]:
    return list(await session.scalars(select(Project).order_by(Project.name)))


def project_json(project: Project) -> dict[str, Any]:
    return {
        "id": project.id,
        "name": project.name,
        "github_owner": project.github_owner,
        "github_repo": project.github_repo,
        "installation_id": project.installation_id,
        "created_at": project.created_at.isoformat(),
    }


# Matrices


async def create_matrix(session: AsyncSession, project_name: Any, name: Any, config: Any) -> TestMatrix:
    project = await get_project(session, project_name)
    name = _check_name(name, "name")
    try:
        config = validate_config(config)
        expand(config)
    except MatrixError as exc:
        raise Invalid(str(exc), exc.field if exc.field != "config" else "config") from None
    if await session.scalar(select(TestMatrix.id).where(TestMatrix.name == name)):
        raise Conflict(f"a matrix named {name!r} already exists", "name")
    matrix = TestMatrix(name=name, project_id=project.id, config=config, project=project)
    session.add(matrix)
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(f"a matrix named {name!r} already exists", "name") from None
    return matrix


async def get_matrix(session: AsyncSession, name: Any, field: str = "matrix_name") -> TestMatrix:
    _check_lookup(name, field)
    matrix = await session.scalar(select(TestMatrix).where(TestMatrix.name == name))
    if matrix is None:
        raise NotFound(f"no matrix named {name!r}", field)
    return matrix


async def list_matrices(session: AsyncSession, project_name: str | None = None) -> list[TestMatrix]:
    query = select(TestMatrix).order_by(TestMatrix.name)
    if project_name:
        project = await get_project(session, project_name, "project")
        query = query.where(TestMatrix.project_id == project.id)
    return list(await session.scalars(query))


async def delete_matrix(session: AsyncSession, name: str) -> None:
    """Delete a matrix unless a rule still uses it."""
    matrix = await get_matrix(session, name, "name")
    users = list(await session.scalars(select(AutoTestRule.id).where(AutoTestRule.matrix_id == matrix.id)))
    if users:
        ids = ", ".join(str(i) for i in users)
        raise Conflict(f"matrix {name!r} is used by rule {ids}; delete or change those rules first", "name")
    await session.delete(matrix)
    await session.flush()


def matrix_json(matrix: TestMatrix) -> dict[str, Any]:
    cells = expand(matrix.config)
    return {
        "id": matrix.id,
        "name": matrix.name,
        "project_id": matrix.project_id,
        "project_name": matrix.project.name,
        "config": matrix.config,
        "cells": [c.label for c in cells],
    }


# Rules


def check_rule_type(value: Any) -> RuleType:
    try:
        return RuleType(value)
    except ValueError:
        raise Invalid(f"rule_type must be one of {', '.join(t.value for t in RuleType)}", "rule_type") from None


def check_pattern(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid("pattern must be a non-empty string", "pattern")
    if len(value) > PATTERN_MAX_LENGTH:
        raise Invalid(f"pattern is longer than {PATTERN_MAX_LENGTH} characters", "pattern")
    if CONTROL_RE.search(value):
        raise Invalid("pattern contains control characters", "pattern")
    return value.strip()


async def create_rule(
    session: AsyncSession,
    project_name: Any,
    rule_type: Any,
    pattern: Any,
    matrix_name: Any = None,
    enabled: Any = True,
) -> AutoTestRule:
    rule_type = check_rule_type(rule_type)
    pattern = check_pattern(pattern)
    if not isinstance(enabled, bool):
        raise Invalid("enabled must be true or false", "enabled")
    project = await get_project(session, project_name)
    matrix = None
    if matrix_name is not None and matrix_name != "":
        matrix = await get_matrix(session, matrix_name)
        if matrix.project_id != project.id:
            raise Invalid(
                f"matrix {matrix.name!r} belongs to project {matrix.project.name!r}, not {project.name!r}",
                "matrix_name",
            )
    rule = AutoTestRule(
        project_id=project.id, rule_type=rule_type, pattern=pattern, matrix_id=matrix.id if matrix else None,
        enabled=enabled, project=project, matrix=matrix,
    )
    session.add(rule)
    await session.flush()
    return rule


async def get_rule(session: AsyncSession, rule_id: int) -> AutoTestRule:
    rule = await session.get(AutoTestRule, rule_id)
    if rule is None:
        raise NotFound(f"no rule with id {rule_id}", "id")
    return rule


async def list_rules(session: AsyncSession, project_name: str | None = None) -> list[AutoTestRule]:
    query = select(AutoTestRule).order_by(AutoTestRule.id)
    if project_name:
        project = await get_project(session, project_name, "project")
        query = query.where(AutoTestRule.project_id == project.id)
    return list(await session.scalars(query))


async def delete_rule(session: AsyncSession, rule_id: int) -> None:
    rule = await get_rule(session, rule_id)
    await session.delete(rule)
    await session.flush()


async def set_rule_enabled(session: AsyncSession, rule_id: int, enabled: bool) -> AutoTestRule:
    rule = await get_rule(session, rule_id)
    rule.enabled = enabled
    await session.flush()
    return rule


def rule_json(rule: AutoTestRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "project_id": rule.project_id,
        "project_name": rule.project.name,
        "rule_type": rule.rule_type.value,
        "pattern": rule.pattern,
        "matrix_id": rule.matrix_id,
        "matrix_name": rule.matrix.name if rule.matrix else None,
        "enabled": rule.enabled,
    }
