"""REST API for projects, matrices, rules and (read-only) runs, with opp_ci's field names."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from sqlalchemy import select

from . import catalog
from .appkeys import SESSIONMAKER
from .auth import require_role
from .httpjson import int_param, read_json_object
from .models import Role, RunStatus, TestMatrixRun, TestRun

routes = web.RouteTableDef()
RUNS_PAGE_MAX = 500
RUNS_QUERY_PARAMS = ("project", "branch", "pr", "commit", "status", "limit")
PR_NUMBER_MAX = 2**31 - 1
COMMIT_PREFIX = re.compile(r"[0-9a-fA-F]{7,64}")


def run_json(run: TestRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "matrix_run_id": run.matrix_run_id,
        "project_id": run.project_id,
        "cell": run.cell,
        "label": run.label,
        "status": run.status.value,
        "git_ref": run.git_ref,
        "github_owner": run.github_owner,
        "github_repo": run.github_repo,
        "github_commit_sha": run.github_commit_sha,
        "github_pr_number": run.github_pr_number,
        "github_status_url": run.github_status_url,
        "worker": run.worker,
        "result_code": run.result_code,
        "test_exec_seconds": run.test_exec_seconds,
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def matrix_run_json(matrix_run: TestMatrixRun, runs: list[TestRun]) -> dict[str, Any]:
    return {
        "id": matrix_run.id,
        "project_id": matrix_run.project_id,
        "project_name": matrix_run.project.name,
        "rule_id": matrix_run.rule_id,
        "matrix_id": matrix_run.matrix_id,
        "matrix_name": matrix_run.matrix_name,
        "trigger": matrix_run.trigger,
        "git_ref": matrix_run.git_ref,
        "github_owner": matrix_run.github_owner,
        "github_repo": matrix_run.github_repo,
        "github_commit_sha": matrix_run.github_commit_sha,
        "github_pr_number": matrix_run.github_pr_number,
        "github_status_url": matrix_run.github_status_url,
        "created_at": matrix_run.created_at.isoformat(),
        "runs": [run_json(r) for r in runs],
    }


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    async with request.app[SESSIONMAKER]() as session:
        await session.execute(select(1))
    return web.json_response({"ok": True})


@routes.get("/api/projects")
@require_role(Role.READONLY)
async def list_projects(request: web.Request) -> web.Response:
    async with request.app[SESSIONMAKER]() as session:
        projects = await catalog.list_projects(session)
        return web.json_response([catalog.project_json(p) for p in projects])


@routes.post("/api/projects")
@require_role(Role.ADMIN)
async def create_project(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    owner, repo = body.get("github_owner"), body.get("github_repo")
    if "github" in body:
        owner, repo = catalog.parse_github_repo(body["github"])
    elif not isinstance(owner, str) or not isinstance(repo, str) or not owner or not repo:
        raise catalog.Invalid("github_owner and github_repo (or github: OWNER/REPO) are required", "github_owner")
    async with request.app[SESSIONMAKER].begin() as session:
        project = await catalog.create_project(session, body.get("name"), owner, repo)
        return web.json_response(catalog.project_json(project), status=201)


@routes.get("/api/matrices")
@require_role(Role.READONLY)
async def list_matrices(request: web.Request) -> web.Response:
    async with request.app[SESSIONMAKER]() as session:
        matrices = await catalog.list_matrices(session, request.query.get("project"))
        return web.json_response([catalog.matrix_json(m) for m in matrices])


@routes.post("/api/matrices")
@require_role(Role.ADMIN)
async def create_matrix(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    async with request.app[SESSIONMAKER].begin() as session:
        matrix = await catalog.create_matrix(session, body.get("project_name"), body.get("name"), body.get("config"))
        return web.json_response(catalog.matrix_json(matrix), status=201)


@routes.get("/api/github/rules")
@require_role(Role.READONLY)
async def list_rules(request: web.Request) -> web.Response:
    async with request.app[SESSIONMAKER]() as session:
        rules = await catalog.list_rules(session, request.query.get("project"))
        return web.json_response([catalog.rule_json(r) for r in rules])


@routes.post("/api/github/rules")
@require_role(Role.ADMIN)
async def create_rule(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    async with request.app[SESSIONMAKER].begin() as session:
        rule = await catalog.create_rule(
            session,
            body.get("project_name"),
            body.get("rule_type"),
            body.get("pattern"),
            body.get("matrix_name"),
            body.get("enabled", True),
        )
        return web.json_response(catalog.rule_json(rule), status=201)


@routes.get("/api/github/rules/{id}")
@require_role(Role.READONLY)
async def get_rule(request: web.Request) -> web.Response:
    async with request.app[SESSIONMAKER]() as session:
        rule = await catalog.get_rule(session, int_param(request, "id"))
        return web.json_response(catalog.rule_json(rule))


@routes.delete("/api/github/rules/{id}")
@require_role(Role.ADMIN)
async def delete_rule(request: web.Request) -> web.Response:
    async with request.app[SESSIONMAKER].begin() as session:
        await catalog.delete_rule(session, int_param(request, "id"))
    return web.Response(status=204)


@routes.get("/api/runs")
@require_role(Role.READONLY)
async def list_runs(request: web.Request) -> web.Response:
    params = _runs_query(request)
    query = select(TestRun).order_by(TestRun.id.desc())
    if "status" in params:
        try:
            query = query.where(TestRun.status == RunStatus(params["status"]))
        except ValueError:
            raise catalog.Invalid(f"status must be one of {', '.join(s.value for s in RunStatus)}", "status")
    if "branch" in params:
        query = query.where(TestRun.git_ref == params["branch"])
    if "pr" in params:
        pr = params["pr"]
        if not pr.isascii() or not pr.isdigit() or not 0 < int(pr) <= PR_NUMBER_MAX:
            raise catalog.Invalid("pr must be a pull request number", "pr")
        query = query.where(TestRun.github_pr_number == int(pr))
    if "commit" in params:
        if not COMMIT_PREFIX.fullmatch(params["commit"]):
            raise catalog.Invalid("commit must be 7 to 64 hex digits of a commit id", "commit")
        query = query.where(TestRun.github_commit_sha.startswith(params["commit"].lower()))
    try:
        limit = min(int(params.get("limit", "100")), RUNS_PAGE_MAX)
    except ValueError:
        raise catalog.Invalid("limit must be a whole number", "limit") from None
    async with request.app[SESSIONMAKER]() as session:
        if "project" in params:
            project = await catalog.get_project(session, params["project"], "project")
            query = query.where(TestRun.project_id == project.id)
        runs = await session.scalars(query.limit(max(limit, 1)))
        return web.json_response([run_json(r) for r in runs])


def _runs_query(request: web.Request) -> dict[str, str]:
    """The query of `GET /api/runs`: known parameters only, without control characters."""
    for name, value in request.query.items():
        if name not in RUNS_QUERY_PARAMS:
            raise catalog.Invalid(f"unknown query parameter {name!r}; known: {', '.join(RUNS_QUERY_PARAMS)}", name)
        if not value.isprintable():
            raise catalog.Invalid(f"{name} must not contain control characters", name)
    return {name: value for name, value in request.query.items() if value}


@routes.get("/api/runs/{id}")
@require_role(Role.READONLY)
async def get_run(request: web.Request) -> web.Response:
    async with request.app[SESSIONMAKER]() as session:
        run = await session.get(TestRun, int_param(request, "id"))
        if run is None:
            raise catalog.NotFound("no such run", "id")
        return web.json_response(run_json(run))


@routes.get("/api/matrix-runs/{id}")
@require_role(Role.READONLY)
async def get_matrix_run(request: web.Request) -> web.Response:
    async with request.app[SESSIONMAKER]() as session:
        matrix_run = await session.get(TestMatrixRun, int_param(request, "id"))
        if matrix_run is None:
            raise catalog.NotFound("no such matrix run", "id")
        runs = list(await session.scalars(select(TestRun).where(TestRun.matrix_run_id == matrix_run.id).order_by(TestRun.id)))
        return web.json_response(matrix_run_json(matrix_run, runs))
