"""Web pages: home, runs, matrix runs, rules, deliveries, login and logout."""

from __future__ import annotations

import dataclasses
import re
import logging
import math
from collections import defaultdict
from typing import Any, Iterable

from aiohttp import web
from multidict import MultiDictProxy
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import catalog, tokens
from ..appkeys import SESSIONMAKER, SETTINGS
from ..github.manifest import github_web_url
from ..github.sender import NEEDS_CREDENTIALS
from ..matrix import expand
from ..models import (
    AutoTestRule,
    CallState,
    GitHubCall,
    Project,
    Role,
    RuleType,
    RunStatus,
    TestMatrix,
    TestMatrixRun,
    TestRun,
    WebhookDelivery,
    utcnow,
)
from ..statuses import NO_MATRIX_NAME, State, aggregate
from .common import admin_form, csrf_protected, error_page, github_connected, render, safe_next, setup_web
from .session import current_admin, flash, log_in, log_out

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

PAGE_SIZE = 50
RUN_FILTERS = ("project", "status", "branch", "pr", "commit")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
COMMIT_RE = re.compile(r"^[0-9a-f]{7,64}$")
HOME_RECENT = 10
RULE_RECENT = 10
MAX_PAGE = 10_000
WEBHOOK_PATH = "/api/github/webhook"
LOGIN_REFUSED = "That token is invalid or not an admin token."
NO_MATRIX_LABEL = f"none → one {NO_MATRIX_NAME} cell"


@dataclasses.dataclass
class Pager:
    """One page of a newest-first list; links keep the request's other query parameters."""

    request: web.Request
    number: int
    total: int
    size: int = PAGE_SIZE

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    @property
    def first_item(self) -> int:
        return min(self.total, self.offset + 1)

    @property
    def last_item(self) -> int:
        return min(self.total, self.offset + self.size)

    def url(self, number: int) -> str:
        return str(self.request.rel_url.update_query(page=number))

    @property
    def prev_url(self) -> str | None:
        return self.url(self.number - 1) if self.number > 1 else None

    @property
    def next_url(self) -> str | None:
        return self.url(self.number + 1) if self.number < self.pages else None


class BadFilter(Exception):
    """A query parameter a list page cannot use; shown above the list."""


def whole_number(raw: str, low: int, high: int) -> int | None:
    """`raw` as an int from `low` to `high` (ASCII digits only), else None."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > len(str(high)) or not low <= int(raw) <= high:
        return None
    return int(raw)


def query_value(request: web.Request, name: str, default: str = "") -> str:
    """One query parameter, stripped; control characters (NUL included) are a BadFilter naming it."""
    value = request.query.get(name, default)
    if CONTROL_RE.search(value):
        raise BadFilter(f"{name} must not contain control characters")
    return value.strip()


def _page_number(request: web.Request) -> int:
    number = whole_number(query_value(request, "page", "1"), 1, MAX_PAGE)
    if number is None:
        raise BadFilter(f"page must be a whole number from 1 to {MAX_PAGE}")
    return number


def _path_id(request: web.Request) -> int:
    number = whole_number(request.match_info["id"], 1, 2**31 - 1)
    if number is None:
        raise web.HTTPNotFound()
    return number


def repo_url(request: web.Request, owner: str, repo: str) -> str:
    """The repository on GitHub's web site (github.com, or the GitHub Enterprise host)."""
    return f"{github_web_url(request.app[SETTINGS].github_base_url)}/{owner}/{repo}"


def commit_url(request: web.Request, owner: str, repo: str, sha: str) -> str:
    return f"{repo_url(request, owner, repo)}/commit/{sha}"


def pr_url(request: web.Request, owner: str, repo: str, number: int) -> str:
    return f"{repo_url(request, owner, repo)}/pull/{number}"


def run_seconds(run: TestRun) -> float | None:
    """How long a run took (or has been running)."""
    if run.test_exec_seconds is not None:
        return run.test_exec_seconds
    if run.started_at is None:
        return None
    return ((run.finished_at or utcnow()) - run.started_at).total_seconds()


async def _states(session: AsyncSession, matrix_run_ids: Iterable[int]) -> dict[int, tuple[State, str]]:
    """The aggregated commit-status state and description of each matrix run."""
    ids = list(matrix_run_ids)
    statuses: dict[int, list[RunStatus]] = defaultdict(list)
    if ids:
        rows = await session.execute(
            select(TestRun.matrix_run_id, TestRun.status, func.count())
            .where(TestRun.matrix_run_id.in_(ids))
            .group_by(TestRun.matrix_run_id, TestRun.status)
        )
        for matrix_run_id, status, count in rows:
            statuses[matrix_run_id].extend([status] * count)
    return {i: aggregate(statuses[i]) for i in ids}


async def _recent_matrix_runs(session: AsyncSession, query) -> list[dict[str, Any]]:
    matrix_runs = list(await session.scalars(query))
    states = await _states(session, (m.id for m in matrix_runs))
    return [{"run": m, "state": states[m.id][0], "description": states[m.id][1]} for m in matrix_runs]


# Home


@routes.get("/", name="home")
async def home(request: web.Request) -> web.Response:
    async with request.app[SESSIONMAKER]() as session:
        counts = {
            "projects": await session.scalar(select(func.count()).select_from(Project)),
            "matrices": await session.scalar(select(func.count()).select_from(TestMatrix)),
            "rules": await session.scalar(select(func.count()).select_from(AutoTestRule)),
            "rules_enabled": await session.scalar(
                select(func.count()).select_from(AutoTestRule).where(AutoTestRule.enabled.is_(True))
            ),
            "matrix_runs": await session.scalar(select(func.count()).select_from(TestMatrixRun)),
            "deliveries": await session.scalar(select(func.count()).select_from(WebhookDelivery)),
        }
        by_status = dict(
            (await session.execute(select(TestRun.status, func.count()).group_by(TestRun.status))).all()
        )
        recent = await _recent_matrix_runs(
            session, select(TestMatrixRun).order_by(TestMatrixRun.id.desc()).limit(HOME_RECENT)
        )
        projects = await catalog.list_projects(session)
    return await render(
        request,
        "home.html",
        {
            "counts": counts,
            "by_status": {s: by_status.get(s, 0) for s in RunStatus},
            "recent": recent,
            "projects": projects,
            "webhook_url": f"{request.app[SETTINGS].public_url}{WEBHOOK_PATH}",
        },
    )


# Runs


@routes.get("/runs", name="runs")
async def runs_page(request: web.Request) -> web.Response:
    filters = dict.fromkeys(RUN_FILTERS, "")
    async with request.app[SESSIONMAKER]() as session:
        projects = await catalog.list_projects(session)
        names = {p.id: p.name for p in projects}
        context: dict[str, Any] = {
            "filters": filters,
            "projects": projects,
            "project_names": names,
            "statuses": list(RunStatus),
            "runs": [],
            "pager": None,
            "error": None,
        }
        try:
            unusable = None
            for name in RUN_FILTERS:
                try:
                    filters[name] = query_value(request, name)
                except BadFilter as exc:
                    unusable = unusable or exc
            if unusable:
                raise unusable
            filters["commit"] = filters["commit"].lower()
            number = _page_number(request)
            select_runs = select(TestRun)
            if filters["project"]:
                project = next((p for p in projects if p.name == filters["project"]), None)
                if project is None:
                    raise BadFilter(f"there is no project named {filters['project']!r}")
                select_runs = select_runs.where(TestRun.project_id == project.id)
            if filters["status"]:
                try:
                    select_runs = select_runs.where(TestRun.status == RunStatus(filters["status"]))
                except ValueError:
                    raise BadFilter(f"status must be one of {', '.join(s.value for s in RunStatus)}") from None
            if filters["branch"]:
                select_runs = select_runs.where(TestRun.git_ref == filters["branch"])
            if filters["pr"]:
                pr_number = whole_number(filters["pr"].removeprefix("#"), 1, 2**31 - 1)
                if pr_number is None:
                    raise BadFilter("PR must be a pull request number, such as 42")
                select_runs = select_runs.where(TestRun.github_pr_number == pr_number)
            if filters["commit"]:
                if not COMMIT_RE.match(filters["commit"]):
                    raise BadFilter("commit must be a commit SHA or its first 7 or more hex digits")
                select_runs = select_runs.where(TestRun.github_commit_sha.startswith(filters["commit"], autoescape=True))
        except BadFilter as exc:
            context["error"] = str(exc)
            return await render(request, "runs.html", context, status=400)
        total = await session.scalar(select(func.count()).select_from(select_runs.subquery()))
        pager = Pager(request, number, total or 0)
        runs = list(
            await session.scalars(select_runs.order_by(TestRun.id.desc()).offset(pager.offset).limit(pager.size))
        )
    context.update(runs=runs, pager=pager, filtered=any(filters.values()), run_seconds=run_seconds)
    return await render(request, "runs.html", context)


@routes.get("/runs/{id}", name="run")
async def run_page(request: web.Request) -> web.Response:
    run_id = _path_id(request)
    async with request.app[SESSIONMAKER]() as session:
        run = await session.get(TestRun, run_id)
        if run is None:
            return await error_page(request, 404, f"There is no run {run_id}. See the list of runs.")
        project = await session.get(Project, run.project_id)
        matrix_run = await session.get(TestMatrixRun, run.matrix_run_id)
    return await render(
        request,
        "run.html",
        {
            "run": run,
            "project": project,
            "matrix_run": matrix_run,
            "seconds": run_seconds(run),
            "commit_url": commit_url(request, run.github_owner, run.github_repo, run.github_commit_sha),
            "pr_url": pr_url(request, run.github_owner, run.github_repo, run.github_pr_number) if run.github_pr_number else None,
        },
    )


@routes.get("/matrix-runs/{id}", name="matrix_run")
async def matrix_run_page(request: web.Request) -> web.Response:
    matrix_run_id = _path_id(request)
    async with request.app[SESSIONMAKER]() as session:
        matrix_run = await session.get(TestMatrixRun, matrix_run_id)
        if matrix_run is None:
            return await error_page(request, 404, f"There is no matrix run {matrix_run_id}.")
        runs = list(
            await session.scalars(select(TestRun).where(TestRun.matrix_run_id == matrix_run.id).order_by(TestRun.id))
        )
        calls = list(
            await session.scalars(
                select(GitHubCall)
                .where(GitHubCall.matrix_run_id == matrix_run.id, GitHubCall.state != CallState.SUPERSEDED)
                .order_by(GitHubCall.id)
            )
        )
    state, description = aggregate(r.status for r in runs)
    owner, repo = matrix_run.github_owner, matrix_run.github_repo
    return await render(
        request,
        "matrix_run.html",
        {
            "mr": matrix_run,
            "runs": runs,
            "state": state,
            "description": description,
            "calls": calls,
            "failed_calls": [c for c in calls if c.state == CallState.FAILED],
            "connected": github_connected(request),
            "needs_credentials": NEEDS_CREDENTIALS,
            "now": utcnow(),
            "run_seconds": run_seconds,
            "commit_url": commit_url(request, owner, repo, matrix_run.github_commit_sha),
            "pr_url": pr_url(request, owner, repo, matrix_run.github_pr_number) if matrix_run.github_pr_number else None,
            "repo_url": repo_url(request, owner, repo),
        },
    )


# Rules


async def _rules_context(session: AsyncSession) -> dict[str, Any]:
    return {
        "rules": await catalog.list_rules(session),
        "projects": await catalog.list_projects(session),
        "matrices": await catalog.list_matrices(session),
        "rule_types": list(RuleType),
        "no_matrix_label": NO_MATRIX_LABEL,
        "form": {"project": "", "rule_type": RuleType.BRANCH.value, "pattern": "", "matrix": "", "enabled": True},
        "error": None,
    }


@routes.get("/rules", name="rules")
async def rules_page(request: web.Request) -> web.Response:
    async with request.app[SESSIONMAKER]() as session:
        context = await _rules_context(session)
    return await render(request, "rules.html", context)


def _form_text(form: MultiDictProxy, name: str) -> str:
    """A text field of a form; an uploaded file in its place counts as empty."""
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


@routes.post("/rules")
@admin_form
async def create_rule(request: web.Request, form: MultiDictProxy) -> web.StreamResponse:
    values = {
        "project": _form_text(form, "project"),
        "rule_type": _form_text(form, "rule_type"),
        "pattern": _form_text(form, "pattern"),
        "matrix": _form_text(form, "matrix"),
        "enabled": bool(form.get("enabled")),
    }
    try:
        for name in ("project", "rule_type", "pattern", "matrix"):
            if CONTROL_RE.search(values[name]):
                values[name] = CONTROL_RE.sub("", values[name])
                raise catalog.Invalid(f"{name} must not contain control characters", name)
        async with request.app[SESSIONMAKER].begin() as session:
            rule = await catalog.create_rule(
                session, values["project"], values["rule_type"], values["pattern"], values["matrix"] or None,
                values["enabled"],
            )
            summary = f"Rule {rule.id} created: {rule.rule_type.value} {rule.pattern!r} in {rule.project.name}"
    except catalog.CatalogError as exc:
        async with request.app[SESSIONMAKER]() as session:
            context = await _rules_context(session)
        context.update(form=values, error=exc.message, error_field=exc.field)
        return await render(request, "rules.html", context, status=422 if exc.status == 404 else exc.status)
    await flash(request, summary)
    raise web.HTTPSeeOther("/rules")


@routes.get("/rules/{id}", name="rule")
async def rule_page(request: web.Request) -> web.Response:
    rule_id = _path_id(request)
    async with request.app[SESSIONMAKER]() as session:
        try:
            rule = await catalog.get_rule(session, rule_id)
        except catalog.NotFound:
            return await error_page(request, 404, f"There is no rule {rule_id}; it may have been deleted.")
        cells = [c.label for c in expand(rule.matrix.config)] if rule.matrix else [NO_MATRIX_NAME]
        recent = await _recent_matrix_runs(
            session,
            select(TestMatrixRun).where(TestMatrixRun.rule_id == rule.id).order_by(TestMatrixRun.id.desc()).limit(RULE_RECENT),
        )
    return await render(request, "rule.html", {"rule": rule, "cells": cells, "recent": recent})


@routes.post("/rules/{id}/enabled")
@admin_form
async def set_rule_enabled(request: web.Request, form: MultiDictProxy) -> web.StreamResponse:
    rule_id = _path_id(request)
    enabled = form.get("enabled") == "1"
    try:
        async with request.app[SESSIONMAKER].begin() as session:
            await catalog.set_rule_enabled(session, rule_id, enabled)
    except catalog.NotFound:
        return await error_page(request, 404, f"There is no rule {rule_id}; it may have been deleted.")
    await flash(request, f"Rule {rule_id} {'enabled' if enabled else 'disabled'}.")
    raise web.HTTPSeeOther(f"/rules/{rule_id}")


@routes.post("/rules/{id}/delete")
@admin_form
async def delete_rule(request: web.Request, form: MultiDictProxy) -> web.StreamResponse:
    rule_id = _path_id(request)
    try:
        async with request.app[SESSIONMAKER].begin() as session:
            await catalog.delete_rule(session, rule_id)
    except catalog.NotFound:
        return await error_page(request, 404, f"There is no rule {rule_id}; it may have been deleted already.")
    await flash(request, f"Rule {rule_id} deleted.")
    raise web.HTTPSeeOther("/rules")


# Deliveries


@routes.get("/deliveries", name="deliveries")
async def deliveries_page(request: web.Request) -> web.Response:
    try:
        number = _page_number(request)
    except BadFilter as exc:
        return await error_page(request, 400, str(exc))
    async with request.app[SESSIONMAKER]() as session:
        total = await session.scalar(select(func.count()).select_from(WebhookDelivery)) or 0
        pager = Pager(request, number, total)
        deliveries = list(
            await session.scalars(
                select(WebhookDelivery)
                .order_by(WebhookDelivery.received_at.desc(), WebhookDelivery.id.desc())
                .offset(pager.offset)
                .limit(pager.size)
            )
        )
        failed = await _failed_calls(session, [i for d in deliveries for i in (d.matrix_run_ids or [])])
    return await render(
        request,
        "deliveries.html",
        {
            "deliveries": deliveries,
            "pager": pager,
            "failed": failed,
            "webhook_url": f"{request.app[SETTINGS].public_url}{WEBHOOK_PATH}",
        },
    )


async def _failed_calls(session: AsyncSession, matrix_run_ids: list[int]) -> dict[int, list[GitHubCall]]:
    """GitHub calls that were given up on (GitHub refused them), by matrix run."""
    failed: dict[int, list[GitHubCall]] = defaultdict(list)
    if matrix_run_ids:
        for call in await session.scalars(
            select(GitHubCall)
            .where(GitHubCall.matrix_run_id.in_(matrix_run_ids), GitHubCall.state == CallState.FAILED)
            .order_by(GitHubCall.id)
        ):
            failed[call.matrix_run_id].append(call)
    return failed


# Login


@routes.get("/login", name="login")
async def login_page(request: web.Request) -> web.Response:
    return await render(request, "login.html", {"next": safe_next(request.query.get("next")), "error": None})


@routes.post("/login")
@csrf_protected
async def login(request: web.Request, form: MultiDictProxy) -> web.StreamResponse:
    next_path = safe_next(form.get("next"))
    token = form.get("token", "")
    row = None
    if isinstance(token, str) and token.strip():
        async with request.app[SESSIONMAKER]() as session:
            row = await tokens.lookup(session, token.strip())
    if row is None or not row.role.allows(Role.ADMIN):
        log.warning("web login refused from %s: invalid or not an admin token", request.remote)
        return await render(request, "login.html", {"next": next_path, "error": LOGIN_REFUSED}, status=403)
    await log_in(request, row)
    log.info("web login with admin token %s (id %s) from %s", tokens.masked(row), row.id, request.remote)
    await flash(request, f"Logged in with admin token {row.name or tokens.masked(row)}.")
    raise web.HTTPSeeOther(next_path)


@routes.post("/logout", name="logout")
@csrf_protected
async def logout(request: web.Request, form: MultiDictProxy) -> web.StreamResponse:
    was_admin = await current_admin(request) is not None
    await log_out(request)
    if was_admin:
        await flash(request, "Logged out.")
    raise web.HTTPSeeOther("/")


def setup(app: web.Application) -> None:
    """Templates, static files, sessions, error pages and every page route."""
    setup_web(app)
    app.router.add_routes(routes)
