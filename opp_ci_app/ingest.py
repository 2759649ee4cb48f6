"""Handling verified deliveries: the router context, one transaction per batch of deliveries (group commit)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import datetime as dt
import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from gidgethub import sansio
from sqlalchemy import Connection, Engine, bindparam, func, select, tuple_, update
from sqlalchemy import event as sa_event
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import routers

from . import planning
from .config import Settings
from .db import create_engine, create_sqlite_sync_engine, insert_processed, is_sqlite, sessionmaker
from .models import Installation, Project, WebhookDelivery, utcnow
from .planning import BadPayload, Head, ProjectRules

log = logging.getLogger(__name__)

# Deliveries committed together at most; more wait for the next transaction.
MAX_BATCH = 128
# SQLite has one writer; PostgreSQL takes a few transactions at once.
SQLITE_WRITERS = 1
POSTGRESQL_WRITERS = 4
REPOSITORY_MAX_LENGTH = 255
IGNORED_MAX_LENGTH = 500


class Answer(enum.IntEnum):
    OK = 200
    BAD_REQUEST = 400
    UNAVAILABLE = 503


@dataclass(frozen=True)
class ProjectRow:
    """The project columns a delivery needs."""

    id: int
    name: str
    github_owner: str
    github_repo: str
    installation_id: int | None
    rules_version: int
    created_at: dt.datetime

    @property
    def full_name(self) -> str:
        return f"{self.github_owner}/{self.github_repo}"


PROJECT_COLUMNS = (
    Project.id,
    Project.name,
    Project.github_owner,
    Project.github_repo,
    Project.installation_id,
    Project.rules_version,
    Project.created_at,
)


# The ingest's hot queries, built once: SQLAlchemy then finds them compiled without rebuilding them.
SELECT_PROJECTS = select(*PROJECT_COLUMNS).where(
    tuple_(func.lower(Project.github_owner), func.lower(Project.github_repo)).in_(bindparam("keys", expanding=True))
)
SELECT_SEEN = select(WebhookDelivery.guid).where(WebhookDelivery.guid.in_(bindparam("guids", expanding=True)))


def _repo_key(owner: str, repo: str) -> tuple[str, str]:
    return owner.lower(), repo.lower()


async def load_projects(session: AsyncSession, repositories: Iterable[tuple[str, str]]) -> dict[tuple[str, str], ProjectRow]:
    """The projects of these (owner, repo) pairs, keyed by their lower-cased names; one query."""
    return await (await session.connection()).run_sync(load_projects_on, list(repositories))


def load_projects_on(connection: Connection, repositories: Iterable[tuple[str, str]]) -> dict[tuple[str, str], ProjectRow]:
    """`load_projects` on a synchronous connection."""
    keys = sorted({_repo_key(*r) for r in repositories})
    if not keys:
        return {}
    rows = connection.execute(SELECT_PROJECTS, {"keys": keys})
    projects = [ProjectRow(*row) for row in rows]
    return {_repo_key(p.github_owner, p.github_repo): p for p in projects}


class RulesCache:
    """Compiled rules per project, rebuilt when the project's `rules_version` moves (database triggers bump it)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[tuple[int, dt.datetime], ProjectRules]] = {}

    def _stale(self, project: ProjectRow) -> bool:
        entry = self._entries.get(project.id)
        return entry is None or entry[0] != (project.rules_version, project.created_at)

    def refresh(self, connection: Connection, projects: Iterable[ProjectRow]) -> None:
        """Load the rules of those of these projects whose cached rules are stale."""
        for project in projects:
            if self._stale(project):
                rules = planning.load_project_rules(connection, project.id)
                self._entries[project.id] = ((project.rules_version, project.created_at), rules)

    async def get(self, session: AsyncSession | None, project: ProjectRow) -> ProjectRules:
        """The project's rules; reads them only when stale (never after `refresh`)."""
        if self._stale(project):
            assert session is not None, "planning without a session needs its rules refreshed first"
            await (await session.connection()).run_sync(self.refresh, [project])
        return self._entries[project.id][1]


@dataclass
class PlannedRun:
    """For `rule test-webhook`: a matrix run that was (or would be) queued."""

    rule_ids: tuple[int, ...]
    patterns: tuple[str, ...]
    matrix_name: str
    labels: list[str]


@dataclass
class Delivery:
    """One delivery being handled: what router handlers get as their context, and what they did.

    With `planning_only` the handlers decide without writing: `queue` keeps what it would
    queue in `to_queue`, and anything else that must write marks the delivery `needs_writes`
    so that it is handled again, writing, on its own.
    """

    session: AsyncSession | None
    settings: Settings
    rules: RulesCache
    event: sansio.Event
    projects: dict[tuple[str, str], ProjectRow] | None = None
    planning_only: bool = False
    # False for `opp_ci rule test-webhook --queue`: nothing it queues is reported to GitHub.
    report_to_github: bool = True
    project: ProjectRow | None = None
    ignored: str | None = None
    matrix_run_ids: list[int] = field(default_factory=list)
    runs_queued: int = 0
    reply: dict[str, Any] = field(default_factory=dict)
    planned: list[PlannedRun] = field(default_factory=list)
    to_queue: planning.QueueItem | None = None
    needs_writes: bool = False
    # The branch, tag or PR the delivery queues or cancels on (set by the planning pass).
    head_key: tuple | None = None

    @property
    def guid(self) -> str:
        return self.event.delivery_id

    @property
    def action(self) -> str | None:
        action = self.event.data.get("action")
        return action if isinstance(action, str) else None

    @property
    def repository(self) -> str | None:
        repository = self.event.data.get("repository")
        name = repository.get("full_name") if isinstance(repository, dict) else None
        if not isinstance(name, str) and (pair := _safe_repository(self.event.data)):
            name = "/".join(pair)
        return name[:REPOSITORY_MAX_LENGTH] if isinstance(name, str) and name else None

    def may_write(self) -> bool:
        """True when a handler may write now; in the planning pass it marks the delivery instead."""
        if self.planning_only:
            self.needs_writes = True
            return False
        return True

    def ignore(self, reason: str) -> None:
        """Nothing (more) to do, and why."""
        self.ignored = reason[:IGNORED_MAX_LENGTH]

    async def find_project(self) -> ProjectRow | None:
        """The project owning the payload's repository; ignores the delivery when there is none."""
        pair = planning.repository_of(self.event.data)
        if pair is None:
            raise BadPayload("payload has no repository")
        if self.projects is None:
            self.projects = await load_projects(self.session, [pair])
        self.project = self.projects.get(_repo_key(*pair))
        if self.project is None:
            self.ignore(f"no project for repository {pair[0]}/{pair[1]}")
            return None
        installation_id = planning.field(self.event.data, "installation", "id", kind=int, required=False)
        if installation_id is not None and installation_id != self.project.installation_id and self.may_write():
            await self.session.execute(
                update(Project).where(Project.id == self.project.id).values(installation_id=installation_id)
            )
        return self.project

    async def queue(self, head: Head) -> None:
        """Queue the matrix runs of every enabled rule matching `head` (and supersede older ones)."""
        project = self.project
        assert project is not None
        rules = await self.rules.get(self.session, project)
        plans = rules.plan(head.rule_type, head.git_ref)
        self.planned = [
            PlannedRun(p.rule_ids, tuple(rules.patterns[i] for i in p.rule_ids), p.matrix.name, list(p.matrix.labels))
            for p in plans
        ]
        if not plans:
            self.ignore(f"no enabled {head.rule_type.value} rule matches {head.git_ref!r}")
            return
        item = planning.QueueItem(
            project.id, project.github_owner, project.github_repo, head, plans, self.guid, self.report_to_github
        )
        if self.planning_only:
            self.to_queue = item
            self.head_key = planning.head_key(project.id, head)
            return
        self.took(await planning.queue_matrix_runs(self.session, self.settings, item))

    def took(self, queued: planning.Queued) -> None:
        """Note what queuing did."""
        self.matrix_run_ids = queued.matrix_run_ids
        self.runs_queued = queued.runs_queued
        if queued.cancelled_matrix_run_ids:
            self.reply["superseded_matrix_runs"] = queued.cancelled_matrix_run_ids

    async def cancel(self, head: Head, why: str) -> None:
        """Cancel the queued runs of a deleted branch or tag, or of a closed PR."""
        project = self.project
        assert project is not None
        if not self.may_write():
            self.head_key = planning.head_key(project.id, head)
            self.ignore(why)
            return
        touched = await planning.cancel_head(self.session, self.settings, project.id, head)
        self.reply["cancelled_matrix_runs"] = touched
        self.ignore(f"{why}; queued runs of {len(touched)} matrix run(s) cancelled")

    def summary(self) -> dict[str, Any]:
        """The JSON answer: delivery, event, matrix_runs, runs_queued (and `ignored` when nothing was done)."""
        body: dict[str, Any] = {
            "delivery": self.guid,
            "event": self.event.event,
            "matrix_runs": self.matrix_run_ids,
            "runs_queued": self.runs_queued,
        }
        if self.ignored is not None:
            body["ignored"] = self.ignored
        body.update(self.reply)
        return body

    def row(self) -> dict[str, Any]:
        """The `webhook_deliveries` row."""
        return {
            "guid": self.guid,
            "event": self.event.event,
            "action": self.action,
            "repository": self.repository,
            "project_id": self.project.id if self.project else None,
            "ignored": self.ignored,
            "runs_queued": self.runs_queued,
            "matrix_run_ids": self.matrix_run_ids,
            "received_at": utcnow(),
        }


def unhandled_reason(event: sansio.Event) -> str:
    action = event.data.get("action")
    if isinstance(action, str):
        return f"{event.event} action {action!r} is not handled"
    return f"event {event.event!r} is not handled"


async def handle(
    session: AsyncSession | None,
    settings: Settings,
    rules: RulesCache,
    event: sansio.Event,
    *,
    projects: dict[tuple[str, str], ProjectRow] | None = None,
    planning_only: bool = False,
    report_to_github: bool = True,
) -> Delivery:
    """Dispatch one verified event through the routers; writes what it implies unless `planning_only`."""
    delivery = Delivery(
        session, settings, rules, event, projects=projects, planning_only=planning_only,
        report_to_github=report_to_github,
    )
    if routers.router.fetch(event):
        await routers.router.dispatch(event, delivery)
    else:
        delivery.ignore(unhandled_reason(event))
    return delivery


class DuplicateDelivery(Exception):
    """The delivery GUID is already recorded."""


async def record(session: AsyncSession, deliveries: list[Delivery]) -> None:
    """Insert the delivery rows; DuplicateDelivery when a GUID is already there."""
    await (await session.connection()).run_sync(record_on, deliveries)


def record_on(connection: Connection, deliveries: list[Delivery]) -> None:
    """`record` on a synchronous connection."""
    try:
        insert_processed(connection, WebhookDelivery.__table__, [d.row() for d in deliveries])
    except IntegrityError:
        raise DuplicateDelivery() from None


@dataclass(frozen=True)
class Outcome:
    status: int
    body: dict[str, Any]


DUPLICATE = Outcome(Answer.OK, {"duplicate": True})


def _unavailable(guid: str) -> Outcome:
    return Outcome(Answer.UNAVAILABLE, {"error": "the database is unavailable; the delivery was not recorded", "delivery": guid})


def _bad(guid: str, message: str) -> Outcome:
    return Outcome(Answer.BAD_REQUEST, {"error": message, "delivery": guid})


def _failed(exc: Exception, guid: str, event_name: str) -> Outcome:
    """The answer to a delivery whose handling raised `exc`, from its `except` block (never a 5xx for bad input)."""
    if isinstance(exc, DuplicateDelivery):
        return DUPLICATE
    if isinstance(exc, BadPayload):
        return _bad(guid, str(exc))
    extra = {"delivery": guid, "event": event_name}
    if isinstance(exc, DataError):
        # A value the database refuses (one the payload checks let through): bad input, not an outage.
        log.exception("database refused a value of delivery %s", guid, extra=extra)
        return _bad(guid, "the payload has a value the database cannot store")
    if isinstance(exc, DBAPIError):
        log.exception("database error while handling delivery %s", guid, extra=extra)
        return _unavailable(guid)
    # The payload passed every check yet broke a handler: answer it as bad input.
    log.exception("could not handle delivery %s (%s)", guid, event_name, extra=extra)
    return _bad(guid, "the payload could not be processed")


async def handle_alone(session: AsyncSession, settings: Settings, rules: RulesCache, event: sansio.Event,
                       projects: dict[tuple[str, str], ProjectRow] | None = None) -> Outcome:
    """Handle and record one delivery in its own savepoint."""
    try:
        async with session.begin_nested():
            delivery = await handle(session, settings, rules, event, projects=projects)
            await record(session, [delivery])
        return Outcome(Answer.OK, delivery.summary())
    except Exception as exc:
        return _failed(exc, event.delivery_id, event.event)


def _run_now(coroutine):
    """Run to its end, synchronously, a coroutine that never waits (planning with everything it reads loaded)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("planning a delivery must not wait")


@dataclass
class Batch:
    """Deliveries handled in one transaction: each one's outcome, or its plan, or that it is to be handled alone."""

    events: list[sansio.Event]
    projects: dict[tuple[str, str], ProjectRow]
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    plans: dict[int, Delivery] = field(default_factory=dict)
    alone: list[int] = field(default_factory=list)

    def answers(self) -> list[Outcome]:
        return [self.outcomes[i] for i in range(len(self.events))]


def plan_batch(connection: Connection, settings: Settings, rules: RulesCache, events: list[sansio.Event]) -> Batch:
    """Read what the deliveries need, in the batch's transaction, and plan each one without writing."""
    guids = {e.delivery_id for e in events}
    seen = set(connection.execute(SELECT_SEEN, {"guids": list(guids)}).scalars())
    projects = load_projects_on(connection, filter(None, (_safe_repository(e.data) for e in events)))
    rules.refresh(connection, projects.values())
    batch = Batch(events, projects)
    for index, event in enumerate(events):
        if event.delivery_id in seen:
            batch.outcomes[index] = DUPLICATE
            continue
        seen.add(event.delivery_id)
        try:
            batch.plans[index] = _run_now(handle(None, settings, rules, event, projects=projects, planning_only=True))
        except Exception as exc:
            batch.outcomes[index] = _failed(exc, event.delivery_id, event.event)
    return batch


def write_batch(connection: Connection, settings: Settings, batch: Batch) -> None:
    """Write with a few bulk statements the planned deliveries that need nothing else; leave the others `alone`.

    Left alone: deliveries that supersede (their head has unfinished runs, maybe queued
    earlier in this batch), cancel, record installations, or update a PR comment.
    """
    busy = planning.unfinished_heads(
        connection, [(d.to_queue.project_id, d.to_queue.head) for d in batch.plans.values() if d.to_queue]
    )
    together: list[tuple[int, Delivery]] = []
    for index, delivery in batch.plans.items():
        key = delivery.head_key
        on_pr = delivery.to_queue is not None and delivery.to_queue.head.pr_number is not None
        if delivery.needs_writes or key in busy or on_pr:
            batch.alone.append(index)
        else:
            together.append((index, delivery))
        if key is not None:
            busy.add(key)
    if not together:
        return
    deliveries = [d for _, d in together]
    queuing = [d for d in deliveries if d.to_queue]
    if not queuing and connection.dialect.name == "sqlite":
        # Only delivery rows, their GUIDs checked while this writer holds SQLite's write lock: no
        # savepoint needed, and a failure here fails the whole transaction (nothing is recorded).
        record_on(connection, deliveries)
    else:
        try:
            with connection.begin_nested():
                queued, _pr_matrix_runs = planning.insert_matrix_runs_on(connection, settings, [d.to_queue for d in queuing])
                for delivery, result in zip(queuing, queued):
                    delivery.took(result)
                record_on(connection, deliveries)
        except Exception:
            # A duplicate that committed meanwhile (PostgreSQL), or anything else: isolate the culprit.
            log.info("bulk write of %d deliveries failed; writing them one at a time", len(together), exc_info=True)
            batch.alone = sorted(batch.alone + [index for index, _ in together])
            return
    batch.outcomes.update((index, Outcome(Answer.OK, d.summary())) for index, d in together)


async def process_batch(
    session: AsyncSession, settings: Settings, rules: RulesCache, events: list[sansio.Event]
) -> list[Outcome]:
    """Handle deliveries in the session's open transaction.

    Each delivery is first planned without writing. Those that only record themselves or
    queue runs on a head with nothing to supersede are written together with a few bulk
    statements; then the others, in order, one at a time, each in its own savepoint.
    """
    # Core statements on the session's connection: the hot path skips the ORM layer.
    connection = await session.connection()
    batch = await connection.run_sync(plan_batch, settings, rules, events)
    await planning.lock_heads(session, {d.head_key for d in batch.plans.values() if d.head_key})
    await connection.run_sync(write_batch, settings, batch)
    for index in batch.alone:
        batch.outcomes[index] = await handle_alone(session, settings, rules, events[index], batch.projects)
    return batch.answers()


def _safe_repository(data: Any) -> tuple[str, str] | None:
    try:
        return planning.repository_of(data)
    except BadPayload:
        return None


def _begin_immediate(engine: Engine) -> None:
    """SQLite: transactions start with BEGIN IMMEDIATE so that SAVEPOINTs nest inside them."""

    def no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    def begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    sa_event.listen(engine, "connect", no_implicit_begin)
    sa_event.listen(engine, "begin", begin_immediate)


class Ingest:
    """Group commit: deliveries arriving together are handled in one transaction, a savepoint each.

    On a SQLite file, one writer thread runs each batch's whole transaction synchronously
    (stdlib sqlite3), so a batch costs one thread hop instead of several per statement; the
    deliveries it leaves alone are then handled by the async path, in a transaction of their own.
    """

    def __init__(self, engine: AsyncEngine, settings: Settings, *, max_batch: int = MAX_BATCH) -> None:
        self.settings = settings
        self.rules = RulesCache()
        url = engine.url.render_as_string(hide_password=False)
        self._writer: Engine | None = None
        self._engine: AsyncEngine | None = None
        if is_sqlite(url) and engine.url.database not in (None, "", ":memory:"):
            self._writer = create_sqlite_sync_engine(url, pool_size=1, max_overflow=0)
            _begin_immediate(self._writer)
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="opp_ci-sqlite-writer")
            self._engine = create_engine(url, pool_size=1, max_overflow=0)
            _begin_immediate(self._engine.sync_engine)
            self._writers = SQLITE_WRITERS
        else:
            # PostgreSQL (or an in-memory SQLite database, which only its own engine can see).
            self._writers = POSTGRESQL_WRITERS if not is_sqlite(url) else SQLITE_WRITERS
        self._maker: async_sessionmaker[AsyncSession] = sessionmaker(self._engine or engine)
        self._max_batch = max_batch
        self._pending: collections.deque[tuple[sansio.Event, asyncio.Future[Outcome]]] = collections.deque()
        self._active = 0
        self._tasks: set[asyncio.Task] = set()
        self.batches = 0

    async def submit(self, event: sansio.Event) -> Outcome:
        """Handle one verified delivery; returns once its transaction has committed (or failed)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((event, future))
        if self._active < self._writers:
            self._active += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(len(self._pending), self._max_batch))]
                outcomes = await self._commit([event for event, _ in batch])
                for (_, future), outcome in zip(batch, outcomes):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            self._active -= 1

    async def _commit(self, events: list[sansio.Event]) -> list[Outcome]:
        self.batches += 1
        if self._writer is None:
            return await self._commit_async(events)
        try:
            batch = await asyncio.get_running_loop().run_in_executor(self._thread, self._commit_in_thread, events)
        except Exception:
            log.exception("could not commit %d webhook deliveries", len(events),
                          extra={"deliveries": [e.delivery_id for e in events]})
            return [_unavailable(e.delivery_id) for e in events]
        if batch.alone:
            rest = await self._commit_async([events[i] for i in batch.alone])
            batch.outcomes.update(zip(batch.alone, rest))
        return batch.answers()

    def _commit_in_thread(self, events: list[sansio.Event]) -> Batch:
        """The SQLite writer thread: plan and bulk-write a batch in one synchronous transaction."""
        with self._writer.begin() as connection:
            batch = plan_batch(connection, self.settings, self.rules, events)
            write_batch(connection, self.settings, batch)
        return batch

    async def _commit_async(self, events: list[sansio.Event]) -> list[Outcome]:
        try:
            async with self._maker() as session:
                async with session.begin():
                    return await process_batch(session, self.settings, self.rules, events)
        except Exception:
            log.exception("could not commit %d webhook deliveries", len(events),
                          extra={"deliveries": [e.delivery_id for e in events]})
            return [_unavailable(e.delivery_id) for e in events]

    async def close(self) -> None:
        """Finish the deliveries in hand and release the writer connections."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._writer.dispose)
            self._thread.shutdown()
        if self._engine is not None:
            await self._engine.dispose()


# Installations (App mode): keep `installations` and each project's installation_id true.


async def _assign_projects(session: AsyncSession, installation_id: int, repositories: Iterable[str]) -> None:
    keys = [_repo_key(*name.split("/", 1)) for name in repositories if "/" in name]
    if keys:
        await session.execute(
            update(Project)
            .where(tuple_(func.lower(Project.github_owner), func.lower(Project.github_repo)).in_(keys))
            .values(installation_id=installation_id)
            .execution_options(synchronize_session=False)
        )


async def _release_projects(session: AsyncSession, installation_id: int, repositories: Iterable[str] | None) -> None:
    query = update(Project).where(Project.installation_id == installation_id)
    if repositories is not None:
        keys = [_repo_key(*name.split("/", 1)) for name in repositories if "/" in name]
        if not keys:
            return
        query = query.where(tuple_(func.lower(Project.github_owner), func.lower(Project.github_repo)).in_(keys))
    await session.execute(query.values(installation_id=None).execution_options(synchronize_session=False))


def repository_names(data: Any, key: str) -> list[str]:
    """`full_name` of each repository listed under `key` (absent: none)."""
    items = planning.field(data, key, kind=list, required=False) or []
    names = []
    for index, item in enumerate(items):
        names.append(planning.field({"r": item}, "r", "full_name") if isinstance(item, dict) else None)
        if names[-1] is None:
            raise BadPayload(f"payload field {key}[{index}] must be a repository object")
    return names


async def record_installation(session: AsyncSession, data: Any, action: str) -> dict[str, Any]:
    """Apply an `installation` event (created, deleted, suspend, unsuspend, ...)."""
    installation_id = planning.field(data, "installation", "id", kind=int)
    login = planning.field(data, "installation", "account", "login", required=False) or ""
    account_type = planning.field(data, "installation", "account", "type", required=False)
    selection = planning.field(data, "installation", "repository_selection", required=False)
    row = await session.get(Installation, installation_id)
    if row is None:
        row = Installation(id=installation_id, account_login=login[:100], account_type=(account_type or "")[:20] or None, repositories=[])
        session.add(row)
    else:
        row.account_login = login[:100] or row.account_login
    if action == "deleted":
        row.deleted_at = utcnow()
        row.repositories = []
        await session.flush()
        await _release_projects(session, installation_id, None)
        return {"installation": installation_id}
    row.deleted_at = None
    if action in ("suspend", "unsuspend"):
        row.suspended = action == "suspend"
    if "repositories" in data:
        row.repositories = sorted(repository_names(data, "repositories"))
    await session.flush()
    await _assign_projects(session, installation_id, row.repositories)
    if selection == "all" and login:
        await session.execute(
            update(Project)
            .where(func.lower(Project.github_owner) == login.lower())
            .values(installation_id=installation_id)
            .execution_options(synchronize_session=False)
        )
    return {"installation": installation_id, "repositories": list(row.repositories)}


async def record_installation_repositories(session: AsyncSession, data: Any) -> dict[str, Any]:
    """Apply an `installation_repositories` event (repositories added or removed)."""
    installation_id = planning.field(data, "installation", "id", kind=int)
    added = repository_names(data, "repositories_added")
    removed = repository_names(data, "repositories_removed")
    row = await session.get(Installation, installation_id)
    if row is None:
        login = planning.field(data, "installation", "account", "login", required=False) or ""
        row = Installation(id=installation_id, account_login=login[:100], repositories=[])
        session.add(row)
    gone = {name.lower() for name in removed}
    row.repositories = sorted({n for n in row.repositories if n.lower() not in gone} | set(added))
    await session.flush()
    await _assign_projects(session, installation_id, added)
    await _release_projects(session, installation_id, removed)
    return {"installation": installation_id, "repositories": list(row.repositories)}

