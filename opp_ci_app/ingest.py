"""Handling verified deliveries: the router context, one transaction per batch of deliveries (group commit)."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from gidgethub import sansio
from sqlalchemy import event as sa_event
from sqlalchemy import func, insert, select, tuple_, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import routers

from . import planning
from .config import Settings
from .db import create_engine, is_sqlite, sessionmaker
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


def _repo_key(owner: str, repo: str) -> tuple[str, str]:
    return owner.lower(), repo.lower()


async def load_projects(session: AsyncSession, repositories: Iterable[tuple[str, str]]) -> dict[tuple[str, str], ProjectRow]:
    """The projects of these (owner, repo) pairs, keyed by their lower-cased names; one query."""
    keys = sorted({_repo_key(*r) for r in repositories})
    if not keys:
        return {}
    rows = await (await session.connection()).execute(
        select(*PROJECT_COLUMNS).where(tuple_(func.lower(Project.github_owner), func.lower(Project.github_repo)).in_(keys))
    )
    projects = [ProjectRow(*row) for row in rows]
    return {_repo_key(p.github_owner, p.github_repo): p for p in projects}


class RulesCache:
    """Compiled rules per project, rebuilt when the project's `rules_version` moves (database triggers bump it)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[tuple[int, dt.datetime], ProjectRules]] = {}

    async def get(self, session: AsyncSession, project: ProjectRow) -> ProjectRules:
        key = (project.rules_version, project.created_at)
        entry = self._entries.get(project.id)
        if entry is None or entry[0] != key:
            entry = (key, await planning.load_project_rules(session, project.id))
            self._entries[project.id] = entry
        return entry[1]


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

    session: AsyncSession
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
    session: AsyncSession,
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
    try:
        await (await session.connection()).execute(insert(WebhookDelivery.__table__), [d.row() for d in deliveries])
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


async def _guarded(guid: str, event_name: str, work) -> Outcome:
    """Run `work()`; map what can go wrong to an answer (never a 5xx for bad input)."""
    try:
        return await work()
    except DuplicateDelivery:
        return DUPLICATE
    except BadPayload as exc:
        return _bad(guid, str(exc))
    except DataError:
        # A value the database refuses (one the payload checks let through): bad input, not an outage.
        log.exception("database refused a value of delivery %s", guid, extra={"delivery": guid, "event": event_name})
        return _bad(guid, "the payload has a value the database cannot store")
    except DBAPIError:
        log.exception("database error while handling delivery %s", guid, extra={"delivery": guid, "event": event_name})
        return _unavailable(guid)
    except Exception:
        # The payload passed every check yet broke a handler: answer it as bad input.
        log.exception("could not handle delivery %s (%s)", guid, event_name, extra={"delivery": guid, "event": event_name})
        return _bad(guid, "the payload could not be processed")


async def handle_alone(session: AsyncSession, settings: Settings, rules: RulesCache, event: sansio.Event,
                       projects: dict[tuple[str, str], ProjectRow] | None = None) -> Outcome:
    """Handle and record one delivery in its own savepoint."""

    async def work() -> Outcome:
        async with session.begin_nested():
            delivery = await handle(session, settings, rules, event, projects=projects)
            await record(session, [delivery])
        return Outcome(Answer.OK, delivery.summary())

    return await _guarded(event.delivery_id, event.event, work)


async def process_batch(
    session: AsyncSession, settings: Settings, rules: RulesCache, events: list[sansio.Event]
) -> list[Outcome]:
    """Handle deliveries in the session's open transaction.

    Each delivery is first planned without writing. Those that only record themselves or
    queue runs on a head with nothing to supersede are written together with a few bulk
    statements; the others (superseding, cancelling, installations) one at a time, each in
    its own savepoint. A bulk write that fails is redone one at a time.
    """
    guids = {e.delivery_id for e in events}
    # Core statements on the session's connection: the hot path skips the ORM layer.
    connection = await session.connection()
    seen = set((await connection.execute(select(WebhookDelivery.guid).where(WebhookDelivery.guid.in_(guids)))).scalars())
    projects = await load_projects(session, filter(None, (_safe_repository(e.data) for e in events)))
    outcomes: dict[int, Outcome] = {}
    plans: dict[int, Delivery] = {}
    for index, event in enumerate(events):
        if event.delivery_id in seen:
            outcomes[index] = DUPLICATE
            continue
        seen.add(event.delivery_id)

        async def plan(event=event, index=index) -> Outcome:
            plans[index] = await handle(session, settings, rules, event, projects=projects, planning_only=True)
            return DUPLICATE  # placeholder, replaced once written

        outcome = await _guarded(event.delivery_id, event.event, plan)
        if index not in plans:
            outcomes[index] = outcome
    await planning.lock_heads(session, {d.head_key for d in plans.values() if d.head_key})
    busy = await planning.unfinished_heads(
        session, [(d.to_queue.project_id, d.to_queue.head) for d in plans.values() if d.to_queue]
    )
    together: list[tuple[int, Delivery]] = []
    for index, delivery in plans.items():
        key = delivery.head_key
        if delivery.needs_writes or key in busy:
            outcomes.update(await _write_together(session, settings, rules, projects, together))
            together = []
            outcomes[index] = await handle_alone(session, settings, rules, delivery.event, projects)
        else:
            together.append((index, delivery))
        if key is not None:
            busy.add(key)
    outcomes.update(await _write_together(session, settings, rules, projects, together))
    return [outcomes[i] for i in range(len(events))]


async def _write_together(session, settings, rules, projects, planned: list[tuple[int, Delivery]]) -> dict[int, Outcome]:
    """Write planned deliveries with bulk statements in one savepoint; one at a time if that fails."""
    if not planned:
        return {}
    deliveries = [d for _, d in planned]
    queuing = [d for d in deliveries if d.to_queue]
    if not queuing and session.bind.dialect.name == "sqlite":
        # Only delivery rows, their GUIDs checked while this writer holds SQLite's write lock: no
        # savepoint needed, and a failure here fails the whole transaction (nothing is recorded).
        await record(session, deliveries)
        return {index: Outcome(Answer.OK, d.summary()) for index, d in planned}
    try:
        async with session.begin_nested():
            queued = await planning.insert_matrix_runs(session, settings, [d.to_queue for d in queuing])
            for delivery, result in zip(queuing, queued):
                delivery.took(result)
            await record(session, deliveries)
        return {index: Outcome(Answer.OK, d.summary()) for index, d in planned}
    except Exception:
        # A duplicate that committed meanwhile (PostgreSQL), or anything else: isolate the culprit.
        log.info("bulk write of %d deliveries failed; writing them one at a time", len(planned), exc_info=True)
    return {index: await handle_alone(session, settings, rules, d.event, projects) for index, d in planned}


def _safe_repository(data: Any) -> tuple[str, str] | None:
    try:
        return planning.repository_of(data)
    except BadPayload:
        return None


def _writer_engine(engine: AsyncEngine) -> AsyncEngine:
    """SQLite: one connection whose transactions start with BEGIN IMMEDIATE so SAVEPOINTs nest inside them."""
    writer = create_engine(engine.url.render_as_string(hide_password=False), pool_size=1, max_overflow=0)

    def no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    def begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    sa_event.listen(writer.sync_engine, "connect", no_implicit_begin)
    sa_event.listen(writer.sync_engine, "begin", begin_immediate)
    return writer


class Ingest:
    """Group commit: deliveries arriving together are handled in one transaction, a savepoint each."""

    def __init__(self, engine: AsyncEngine, settings: Settings, *, max_batch: int = MAX_BATCH) -> None:
        self.settings = settings
        self.rules = RulesCache()
        if is_sqlite(str(engine.url)) and engine.url.database not in (None, "", ":memory:"):
            self._engine: AsyncEngine | None = _writer_engine(engine)
            self._maker: async_sessionmaker[AsyncSession] = sessionmaker(self._engine)
            self._writers = SQLITE_WRITERS
        else:
            # PostgreSQL (or an in-memory SQLite database, which only its own engine can see).
            self._engine = None
            self._maker = sessionmaker(engine)
            self._writers = POSTGRESQL_WRITERS if not is_sqlite(str(engine.url)) else SQLITE_WRITERS
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
        try:
            async with self._maker() as session:
                async with session.begin():
                    return await process_batch(session, self.settings, self.rules, events)
        except Exception:
            log.exception("could not commit %d webhook deliveries", len(events),
                          extra={"deliveries": [e.delivery_id for e in events]})
            return [_unavailable(e.delivery_id) for e in events]

    async def close(self) -> None:
        """Finish the deliveries in hand and release the writer connection."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
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

