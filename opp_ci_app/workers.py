"""Worker API: poll, heartbeat, result; and the reaper of expired leases."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import logging
import math
from typing import Any, AsyncIterator

from aiohttp import web
from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .appkeys import SERVICES, SESSIONMAKER, SETTINGS
from .auth import require_role
from .config import Settings
from .github import sender
from .httpjson import BadBody, error, read_json_object
from .models import NAME_MAX_LENGTH, Project, Role, RunStatus, TestRun, utcnow
from .reporting import update_github_status

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

# Stored stdout/stderr keep their last characters: the end of a log says why a run failed.
OUTPUT_MAX_CHARS = 64 * 1024
OUTPUT_CUT_NOTE = "[opp_ci: {cut} earlier characters left out]\n"
DETAILS_MAX_CHARS = 16 * 1024
DETAILS_CUT_NOTE = "\n[opp_ci: cut to {limit} characters]"
# Results may carry whole logs, of which only the tail is kept; other bodies are small.
RESULT_BODY_MAX = 16 * 1024 * 1024
# A run whose lease expires after this many reclaims becomes `error` instead of queued again.
MAX_RECLAIMS = 3
CLAIM_ATTEMPTS = 5
REAPER_INTERVAL_MAX = 30.0
REAPER_KEY = web.AppKey("reaper", asyncio.Task)


class ResultCode(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"
    SKIPPED = "SKIPPED"


RESULT_STATUS = {
    ResultCode.PASS: RunStatus.PASSED,
    ResultCode.SKIPPED: RunStatus.PASSED,
    ResultCode.FAIL: RunStatus.FAILED,
    ResultCode.ERROR: RunStatus.ERROR,
}


@dataclasses.dataclass(frozen=True)
class Result:
    """A worker's report on one run, checked."""

    run_id: int
    result_code: ResultCode
    worker: str | None = None
    test_exec_seconds: float | None = None
    stdout: str | None = None
    stderr: str | None = None
    details: str | None = None


# Body checks: every failure is a 400 naming the field.


def _clean_text(value: str) -> str:
    """Text any database stores: no NUL characters, no lone surrogates."""
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _worker_name(body: dict[str, Any], *, required: bool) -> str | None:
    value = body.get("worker")
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadBody("worker must be a non-empty string naming the worker", "worker")
    value = value.strip()
    if len(value) > NAME_MAX_LENGTH or not value.isprintable():
        raise BadBody(f"worker must be at most {NAME_MAX_LENGTH} printable characters", "worker")
    return _clean_text(value)


def _run_id(body: dict[str, Any]) -> int:
    value = body.get("run_id")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise BadBody("run_id must be a positive whole number", "run_id")
    return value


def _optional_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadBody(f"{name} must be a string", name)
    return _clean_text(value)


def cap_output(text: str | None, limit: int = OUTPUT_MAX_CHARS) -> str | None:
    """The last `limit` characters of a log, saying how much was left out."""
    if text is None or len(text) <= limit:
        return text
    cut = len(text) - limit
    return OUTPUT_CUT_NOTE.format(cut=cut) + text[cut:]


def parse_result(body: dict[str, Any]) -> Result:
    """The result body as opp_ci's workers send it, or BadBody naming the wrong field."""
    run_id = _run_id(body)
    code = body.get("result_code")
    if not isinstance(code, str) or code not in RESULT_STATUS:
        raise BadBody(f"result_code must be one of {', '.join(RESULT_STATUS)}", "result_code")
    code = ResultCode(code)
    seconds = body.get("test_exec_seconds")
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise BadBody("test_exec_seconds must be a number", "test_exec_seconds")
        if not math.isfinite(seconds) or seconds < 0:
            raise BadBody("test_exec_seconds must be a finite number of seconds, not negative", "test_exec_seconds")
        seconds = float(seconds)
    details = _optional_text(body, "details")
    if details is not None and len(details) > DETAILS_MAX_CHARS:
        details = details[:DETAILS_MAX_CHARS] + DETAILS_CUT_NOTE.format(limit=DETAILS_MAX_CHARS)
    return Result(
        run_id=run_id,
        result_code=code,
        worker=_worker_name(body, required=False),
        test_exec_seconds=seconds,
        stdout=cap_output(_optional_text(body, "stdout")),
        stderr=cap_output(_optional_text(body, "stderr")),
        details=details,
    )


# Database work.


async def begin_write(session: AsyncSession) -> None:
    """As the first statement: take SQLite's write lock, so what this transaction reads cannot go stale.

    PostgreSQL locks rows instead (FOR UPDATE); there this does nothing.
    """
    if session.bind.dialect.name == "sqlite":
        connection = await session.connection()
        await connection.exec_driver_sql("BEGIN IMMEDIATE")


def _is_postgresql(session: AsyncSession) -> bool:
    return session.bind.dialect.name == "postgresql"


async def claim_next(session: AsyncSession, worker: str, now: dt.datetime | None = None) -> TestRun | None:
    """Give the oldest queued run to `worker`, atomically; None when there is none to give."""
    now = now or utcnow()
    for _attempt in range(CLAIM_ATTEMPTS):
        oldest = select(TestRun.id).where(TestRun.status == RunStatus.QUEUED).order_by(TestRun.id).limit(1)
        if _is_postgresql(session):
            oldest = oldest.with_for_update(skip_locked=True)
        claimed = await session.scalar(
            update(TestRun)
            .where(TestRun.id == oldest.scalar_subquery(), TestRun.status == RunStatus.QUEUED)
            .values(status=RunStatus.RUNNING, worker=worker, started_at=now, heartbeat_at=now)
            .returning(TestRun.id)
            .execution_options(synchronize_session=False)
        )
        if claimed is not None:
            return await session.get(TestRun, claimed, populate_existing=True)
        # Lost a race (the row changed under the subquery), or nothing is queued at all.
        if not await session.scalar(select(exists().where(TestRun.status == RunStatus.QUEUED))):
            return None
    return None


def job_json(run: TestRun, project: Project) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "project": project.name,
        "cell": run.cell,
        "label": run.label,
        "git_ref": run.git_ref,
        "commit_sha": run.github_commit_sha,
        "github_owner": run.github_owner,
        "github_repo": run.github_repo,
        "github_pr_number": run.github_pr_number,
    }


async def _locked_run(session: AsyncSession, run_id: int) -> TestRun | None:
    return await session.scalar(
        select(TestRun).where(TestRun.id == run_id).with_for_update().execution_options(populate_existing=True)
    )


async def finish_run(session: AsyncSession, settings: Settings, result: Result) -> tuple[int, dict[str, Any]]:
    """Record a result (HTTP status, answer); drops results for runs the worker no longer holds."""
    run = await _locked_run(session, result.run_id)
    if run is None:
        return 404, {"error": f"no run with id {result.run_id}", "field": "run_id"}
    answer: dict[str, Any] = {"run_id": run.id, "status": run.status.value, "accepted": False}
    if run.status.finished:
        if run.status == RunStatus.CANCELLED:
            answer["dropped"] = "the run was cancelled"
        elif run.result_code == result.result_code and (result.worker is None or result.worker == run.worker):
            answer["duplicate"] = True
        else:
            answer["dropped"] = f"the run already finished ({run.status.value})"
        return 200, answer
    if run.status == RunStatus.QUEUED:
        if run.reclaims:
            answer["dropped"] = "the run's lease expired and it was queued again"
        else:
            answer["dropped"] = "the run is queued and has not been claimed by any worker yet"
        return 200, answer
    if result.worker is not None and run.worker != result.worker:
        if run.reclaims:
            answer["dropped"] = f"the run's lease expired and it now belongs to worker {run.worker}"
        else:
            answer["dropped"] = f"the run was claimed by worker {run.worker}, not {result.worker}"
        return 200, answer
    now = utcnow()
    run.status = RESULT_STATUS[result.result_code]
    run.result_code = result.result_code.value
    run.test_exec_seconds = result.test_exec_seconds
    run.stdout, run.stderr, run.details = result.stdout, result.stderr, result.details
    run.finished_at = now
    await session.flush()
    await update_github_status(session, settings, [run.matrix_run_id])
    return 200, {"run_id": run.id, "status": run.status.value, "accepted": True}


@dataclasses.dataclass
class Reaped:
    requeued: list[int] = dataclasses.field(default_factory=list)
    errored: list[int] = dataclasses.field(default_factory=list)


async def reap_expired(session: AsyncSession, settings: Settings, now: dt.datetime | None = None) -> Reaped:
    """Queue again every running run whose lease lapsed; one reclaimed MAX_RECLAIMS times errors."""
    now = now or utcnow()
    deadline = now - dt.timedelta(seconds=settings.worker_lease_seconds)
    query = (
        select(TestRun)
        .where(
            TestRun.status == RunStatus.RUNNING,
            func.coalesce(TestRun.heartbeat_at, TestRun.started_at, TestRun.created_at) < deadline,
        )
        .order_by(TestRun.id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    reaped = Reaped()
    for run in await session.scalars(query):
        if run.reclaims >= MAX_RECLAIMS:
            run.status = RunStatus.ERROR
            run.finished_at = now
            run.details = (
                f"no heartbeat from worker {run.worker} for {settings.worker_lease_seconds}s, "
                f"after {run.reclaims} earlier reclaims; given up"
            )
            reaped.errored.append(run.id)
        else:
            run.reclaims += 1
            run.status = RunStatus.QUEUED
            run.worker = None
            run.started_at = run.heartbeat_at = None
            reaped.requeued.append(run.id)
        log.warning(
            "run lease expired",
            extra={"run_id": run.id, "reclaims": run.reclaims, "new_status": run.status.value},
        )
    if reaped.requeued or reaped.errored:
        await session.flush()
        matrix_run_ids = await session.scalars(
            select(TestRun.matrix_run_id).where(TestRun.id.in_(reaped.requeued + reaped.errored)).distinct()
        )
        await update_github_status(session, settings, list(matrix_run_ids))
    return reaped


async def reap_once(maker: async_sessionmaker[AsyncSession], settings: Settings, now: dt.datetime | None = None) -> Reaped:
    """One reaper pass in its own transaction."""
    async with maker.begin() as session:
        await begin_write(session)
        return await reap_expired(session, settings, now)


# HTTP handlers.


@routes.post("/api/workers/poll")
@require_role(Role.WORKER)
async def poll(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    worker = _worker_name(body, required=True)
    settings = request.app[SETTINGS]
    async with request.app[SESSIONMAKER].begin() as session:
        run = await claim_next(session, worker)
        if run is None:
            return web.json_response({"job": None, "reason": "no queued runs"})
        project = await session.get(Project, run.project_id)
        job = job_json(run, project)
    log.info("run claimed", extra={"run_id": job["run_id"], "worker": worker})
    return web.json_response({"job": job, "lease_seconds": settings.worker_lease_seconds})


@routes.post("/api/workers/heartbeat")
@require_role(Role.WORKER)
async def heartbeat(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    worker = _worker_name(body, required=True)
    run_id = _run_id(body)
    settings = request.app[SETTINGS]
    async with request.app[SESSIONMAKER].begin() as session:
        now = utcnow()
        held = await session.scalar(
            update(TestRun)
            .where(TestRun.id == run_id, TestRun.status == RunStatus.RUNNING, TestRun.worker == worker)
            .values(heartbeat_at=now)
            .returning(TestRun.id)
            .execution_options(synchronize_session=False)
        )
        if held is None:
            run = await session.get(TestRun, run_id)
            if run is None:
                return error(404, f"no run with id {run_id}", "run_id")
            holder = f"running for worker {run.worker}" if run.status == RunStatus.RUNNING else run.status.value
            return error(409, f"run {run_id} is not running for worker {worker} (it is {holder})", "run_id")
    expires = now + dt.timedelta(seconds=settings.worker_lease_seconds)
    return web.json_response({"run_id": run_id, "status": RunStatus.RUNNING.value, "lease_expires_at": expires.isoformat()})


@routes.post("/api/workers/result")
@require_role(Role.WORKER)
async def result(request: web.Request) -> web.Response:
    parsed = parse_result(await read_json_object(request, RESULT_BODY_MAX))
    async with request.app[SESSIONMAKER].begin() as session:
        await begin_write(session)
        status, answer = await finish_run(session, request.app[SETTINGS], parsed)
    if answer.get("accepted"):
        log.info("run finished", extra={"run_id": parsed.run_id, "result_code": parsed.result_code})
        sender.wake(request.app)
    elif status == 200:
        log.info("run result dropped", extra={"run_id": parsed.run_id, "reason": answer.get("dropped", "duplicate")})
    return web.json_response(answer, status=status)


async def _reaper(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    interval = min(REAPER_INTERVAL_MAX, settings.worker_lease_seconds / 4)

    async def loop() -> None:
        while True:
            try:
                reaped = await reap_once(app[SESSIONMAKER], settings)
                if reaped.requeued or reaped.errored:
                    sender.wake(app)
                    log.info("reaper: %d queued again, %d errored", len(reaped.requeued), len(reaped.errored))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reaper pass failed; trying again later")
            await asyncio.sleep(interval)

    app[REAPER_KEY] = asyncio.create_task(loop(), name="opp_ci-reaper")
    yield
    app[REAPER_KEY].cancel()
    try:
        await app[REAPER_KEY]
    except asyncio.CancelledError:
        pass


def setup(app: web.Application) -> None:
    """Register the worker routes, and start the reaper when background tasks run."""
    app.router.add_routes(routes)
    if app[SERVICES].get("background"):
        app.cleanup_ctx.append(_reaper)
