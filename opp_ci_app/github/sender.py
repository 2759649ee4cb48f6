"""The background sender that drains the durable queue of GitHub calls: leases, retries, rate limits."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email.utils
import logging
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, AsyncIterator

import aiohttp
import gidgethub
from aiohttp import web
from sqlalchemy import exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from ..appkeys import HTTP_SESSION, SERVICES, SESSIONMAKER, SETTINGS
from ..catalog import find_project_by_repo
from ..models import CallState, GitHubCall, PrComment, Project, utcnow
from .auth import AuthMode, GitHubAuth
from .client import GitHubClient, pr_comment_marker
from .queue import CallKind

log = logging.getLogger(__name__)

LEASE = dt.timedelta(minutes=3)
BATCH = 20
POLL_SECONDS = 1.0
BACKOFF_BASE = 2.0
BACKOFF_MAX = 15 * 60.0
SECONDARY_LIMIT_WAIT = 60.0
RATE_LIMIT_MAX_WAIT = 2 * 3600.0
# After this many 401s for an installation token the call is given up (the App lost access).
UNAUTHORIZED_RETRIES = 3
ERROR_MAX = 2000
ACTIONS_TOKEN_MISSING = "no OPP_CI_GITHUB_ACTIONS_TOKEN configured: workflow dispatch skipped"
ACTIONS_TOKEN_KEY = "actions"
NEEDS_CREDENTIALS = (CallKind.STATUS, CallKind.PR_COMMENT)
SECONDARY_HINTS = ("secondary rate limit", "abuse")


@dataclasses.dataclass(frozen=True)
class Claimed:
    """A call this sender holds the lease of."""

    id: int
    kind: str
    coalesce_key: str
    github_owner: str
    github_repo: str
    project_id: int | None
    payload: dict[str, Any]
    attempts: int


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What to do with a call after trying it: done, failed, or again after `delay` seconds."""

    state: CallState
    message: str | None = None
    delay: float = 0.0
    # The whole token must wait (rate limits), not only this call.
    block_token: bool = False


class _Release(Exception):
    """Put the call back untouched until `until` (its token is waiting out a rate limit)."""

    def __init__(self, until: dt.datetime) -> None:
        self.until = until


def backoff(attempts: int, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: about 2, 4, 8 ... seconds, at most 15 minutes."""
    base = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(attempts, 20))
    return base * (0.5 + rand() / 2)


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def _retry_after(value: str, now: dt.datetime) -> float | None:
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds())


def _github_message(exc: gidgethub.HTTPException) -> str:
    return f"GitHub answered {int(exc.status_code)}: {exc or exc.status_code.phrase}"


class CallFailed(Exception):
    """The call cannot be made, and trying again will not help."""


class InstallationGone(Exception):
    """The installation id we knew for a repository is gone (the App was reinstalled, say): look again."""


def classify(exc: BaseException, attempts: int, now: dt.datetime, rand: Callable[[], float] = random.random) -> Outcome:
    """The retry policy, in one place: how a failed attempt is handled."""
    if isinstance(exc, CallFailed):
        return Outcome(CallState.FAILED, str(exc))
    if isinstance(exc, gidgethub.BadRequest) and int(exc.status_code) in (403, 429):
        headers = getattr(exc, "headers", None)
        message = _github_message(exc)
        retry_after = _header(headers, "retry-after")
        if retry_after is not None and (wait := _retry_after(retry_after, now)) is not None:
            return Outcome(CallState.PENDING, message, min(max(wait, 1.0), RATE_LIMIT_MAX_WAIT), block_token=True)
        remaining, reset = _header(headers, "x-ratelimit-remaining"), _header(headers, "x-ratelimit-reset")
        if remaining == "0" and reset is not None:
            try:
                wait = float(reset) - now.timestamp() + 1
            except ValueError:
                wait = SECONDARY_LIMIT_WAIT
            return Outcome(CallState.PENDING, message, min(max(wait, 1.0), RATE_LIMIT_MAX_WAIT), block_token=True)
        if int(exc.status_code) == 429 or any(h in message.lower() for h in SECONDARY_HINTS):
            return Outcome(CallState.PENDING, message, max(SECONDARY_LIMIT_WAIT, backoff(attempts, rand)), True)
        return Outcome(CallState.FAILED, message)
    if isinstance(exc, gidgethub.GitHubBroken):
        return Outcome(CallState.PENDING, _github_message(exc), backoff(attempts, rand))
    if isinstance(exc, gidgethub.HTTPException):
        return Outcome(CallState.FAILED, _github_message(exc))
    if isinstance(exc, InstallationGone):
        return Outcome(CallState.PENDING, str(exc), backoff(attempts, rand))
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return Outcome(CallState.PENDING, "GitHub did not answer in time", backoff(attempts, rand))
    if isinstance(exc, aiohttp.ClientError):
        return Outcome(CallState.PENDING, f"cannot reach GitHub: {type(exc).__name__}", backoff(attempts, rand))
    return Outcome(CallState.PENDING, f"unexpected error: {type(exc).__name__}: {exc}", backoff(attempts, rand))


class Sender:
    """Drains due calls from the queue; several senders (processes) may share one database.

    `Sender(sessionmaker, auth, http_session, clock=..., sleep=...)`, or `Sender.for_app(app)`.
    `clock()` returns an aware datetime and `sleep(seconds)` waits, so tests can drive time.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        auth: GitHubAuth,
        http_session: aiohttp.ClientSession,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        lease: dt.timedelta = LEASE,
        batch: int = BATCH,
        name: str | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.auth = auth
        self.http = http_session
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
        self.lease = lease
        self.batch = batch
        self.name = name or f"{socket.gethostname()}:{uuid.uuid4().hex[:12]}"
        self._token_locks: dict[str, asyncio.Lock] = {}
        self._blocked_until: dict[str, dt.datetime] = {}
        self._wake = asyncio.Event()
        self._said_no_credentials = False

    @classmethod
    def for_app(cls, app: web.Application, **kwargs: Any) -> "Sender":
        return cls(app[SESSIONMAKER], app[SERVICES]["github_auth"], app[HTTP_SESSION], **kwargs)

    def wake(self) -> None:
        """Look at the queue now instead of at the next poll."""
        self._wake.set()

    # -- the queue ----------------------------------------------------------------------------

    def _kinds(self) -> list[str]:
        kinds = [CallKind.WORKFLOW_DISPATCH]
        if self.auth.mode is not AuthMode.NONE:
            kinds += NEEDS_CREDENTIALS
        return kinds

    async def supersede_duplicates(self) -> None:
        """Older pending calls with the key of a newer pending one are never sent."""
        newer = aliased(GitHubCall)
        async with self.sessionmaker.begin() as session:
            await session.execute(
                update(GitHubCall)
                .where(
                    GitHubCall.state == CallState.PENDING,
                    exists().where(
                        newer.coalesce_key == GitHubCall.coalesce_key,
                        newer.state == CallState.PENDING,
                        newer.id > GitHubCall.id,
                    ),
                )
                .values(state=CallState.SUPERSEDED)
                .execution_options(synchronize_session=False)
            )

    async def claim(self, limit: int | None = None) -> list[Claimed]:
        """Lease up to `limit` due calls: the newest per key, none whose key another sender is sending."""
        now = self.clock()
        call, newer, sibling = aliased(GitHubCall), aliased(GitHubCall), aliased(GitHubCall)
        due = (
            select(call.id)
            .where(
                call.state == CallState.PENDING,
                call.kind.in_(self._kinds()),
                call.next_attempt_at <= now,
                or_(call.leased_until.is_(None), call.leased_until <= now),
                ~exists().where(
                    newer.coalesce_key == call.coalesce_key, newer.state == CallState.PENDING, newer.id > call.id
                ),
                ~exists().where(
                    sibling.coalesce_key == call.coalesce_key,
                    sibling.id != call.id,
                    sibling.lease_owner.is_not(None),
                    sibling.leased_until > now,
                ),
            )
            .order_by(call.id)
            .limit(limit or self.batch)
            .with_for_update(skip_locked=True)
        )
        async with self.sessionmaker.begin() as session:
            rows = await session.execute(
                update(GitHubCall)
                .where(GitHubCall.id.in_(due))
                .values(leased_until=now + self.lease, lease_owner=self.name)
                .returning(
                    GitHubCall.id,
                    GitHubCall.kind,
                    GitHubCall.coalesce_key,
                    GitHubCall.github_owner,
                    GitHubCall.github_repo,
                    GitHubCall.project_id,
                    GitHubCall.payload,
                    GitHubCall.attempts,
                )
                .execution_options(synchronize_session=False)
            )
            claimed = [Claimed(*row) for row in rows]
        if claimed:
            claimed = await self._yield_to_others(claimed, now)
        return sorted(claimed, key=lambda c: c.id)

    async def _yield_to_others(self, claimed: list[Claimed], now: dt.datetime) -> list[Claimed]:
        """Give up calls whose key another sender claimed at the same moment (READ COMMITTED races).

        Each sender looks after its own claim is committed, so of two racing claims at least one sees
        the other: the older call is obsolete (superseded), the newer one waits for the next round.
        """
        by_key = {c.coalesce_key: c for c in claimed}
        async with self.sessionmaker.begin() as session:
            others = await session.execute(
                select(GitHubCall.id, GitHubCall.coalesce_key).where(
                    GitHubCall.coalesce_key.in_(list(by_key)),
                    GitHubCall.id.not_in([c.id for c in claimed]),
                    GitHubCall.lease_owner.is_not(None),
                    GitHubCall.lease_owner != self.name,
                    GitHubCall.leased_until > now,
                )
            )
            kept = dict(by_key)
            for other_id, key in others:
                mine = kept.pop(key, None)
                if mine is None:
                    continue
                values: dict[str, Any] = {"state": CallState.SUPERSEDED} if mine.id < other_id else {}
                await self._finish(mine, session, **values)
        return list(kept.values())

    async def _finish(self, claimed: Claimed, session: AsyncSession, **values: Any) -> bool:
        """Write the outcome if we still hold the lease; False when another sender took it over."""
        result = await session.execute(
            update(GitHubCall)
            .where(GitHubCall.id == claimed.id, GitHubCall.lease_owner == self.name)
            .values(leased_until=None, lease_owner=None, **values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1

    # -- draining -----------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Send every call that is due now; returns how many calls were handled."""
        handled = 0
        if self.auth.mode is AuthMode.NONE and not self._said_no_credentials:
            log.warning("no GitHub credentials configured: statuses and comments wait in the queue")
            self._said_no_credentials = True
        elif self.auth.mode is not AuthMode.NONE:
            self._said_no_credentials = False
        await self.supersede_duplicates()
        while claimed := await self.claim():
            await asyncio.gather(*(self._handle(c) for c in claimed))
            handled += len(claimed)
        return handled

    async def run_forever(self) -> None:
        """Drain the queue until cancelled; a broken database only delays the next round."""
        failures = 0
        while True:
            try:
                await self.run_once()
                failures = 0
                delay = POLL_SECONDS
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                delay = backoff(failures, self.rand)
                log.exception("the GitHub sender failed; trying again in %.0f s", delay)
            await self._sleep_or_wake(delay)

    async def _sleep_or_wake(self, delay: float) -> None:
        self._wake.clear()
        sleeping = asyncio.ensure_future(self.sleep(delay))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleeping, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            woken.cancel()

    async def _handle(self, claimed: Claimed) -> None:
        extra = {"call_id": claimed.id, "kind": claimed.kind, "repository": f"{claimed.github_owner}/{claimed.github_repo}"}
        if claimed.kind == CallKind.WORKFLOW_DISPATCH and not self.auth.actions_token:
            log.warning("%s (call %s)", ACTIONS_TOKEN_MISSING, claimed.id, extra=extra)
            async with self.sessionmaker.begin() as session:
                await self._finish(
                    claimed, session, state=CallState.FAILED, last_error=ACTIONS_TOKEN_MISSING,
                    attempts=claimed.attempts + 1,
                )
            return
        try:
            await self._send(claimed, extra)
        except _Release as release:
            async with self.sessionmaker.begin() as session:
                await self._finish(claimed, session, next_attempt_at=release.until)
        except Exception as exc:
            await self._failed_attempt(claimed, exc, extra)

    async def _failed_attempt(self, claimed: Claimed, exc: Exception, extra: dict[str, Any]) -> None:
        now = self.clock()
        outcome = classify(exc, claimed.attempts, now, self.rand)
        if isinstance(exc, gidgethub.BadRequest) and int(exc.status_code) == 401 and self.auth.mode is AuthMode.APP:
            # An installation token GitHub no longer takes (see _send): try a new one a few times.
            if claimed.attempts + 1 < UNAUTHORIZED_RETRIES:
                outcome = Outcome(CallState.PENDING, outcome.message, backoff(claimed.attempts, self.rand))
        message = self.auth.redact(outcome.message or "")[:ERROR_MAX]
        async with self.sessionmaker.begin() as session:
            if outcome.state is CallState.FAILED:
                log.error("GitHub call %s failed for good: %s", claimed.id, message, extra=extra)
                await self._finish(
                    claimed, session, state=CallState.FAILED, last_error=message, attempts=claimed.attempts + 1
                )
                return
            until = now + dt.timedelta(seconds=outcome.delay)
            if outcome.block_token:
                key = await self._token_key(claimed)
                self._blocked_until[key] = max(until, self._blocked_until.get(key, until))
            log.warning("GitHub call %s will be retried in %.0f s: %s", claimed.id, outcome.delay, message, extra=extra)
            await self._finish(
                claimed, session, next_attempt_at=until, last_error=message, attempts=claimed.attempts + 1
            )

    async def _installation_id(self, claimed: Claimed) -> int | None:
        """The project's installation id, else looked up on GitHub and stored on the project."""
        if self.auth.mode is not AuthMode.APP:
            return None
        async with self.sessionmaker() as session:
            project = None
            if claimed.project_id is not None:
                project = await session.get(Project, claimed.project_id)
            if project is None:
                project = await find_project_by_repo(session, claimed.github_owner, claimed.github_repo)
            if project is not None and project.installation_id is not None:
                return project.installation_id
        try:
            installation_id = await self.auth.installation_id(self.http, claimed.github_owner, claimed.github_repo)
        except gidgethub.BadRequest as exc:
            if int(exc.status_code) != 404:
                raise
            raise CallFailed(
                f"the GitHub App is not installed on {claimed.github_owner}/{claimed.github_repo}"
            ) from None
        if project is not None:
            async with self.sessionmaker.begin() as session:
                await session.execute(
                    update(Project).where(Project.id == project.id).values(installation_id=installation_id)
                )
        return installation_id

    async def _repo_client(self, claimed: Claimed, installation_id: int | None) -> GitHubClient:
        """The client for a repository call; a stale installation id is forgotten so the next try looks again."""
        try:
            return await self.auth.repo_client(self.http, installation_id)
        except gidgethub.BadRequest as exc:
            if installation_id is None or int(exc.status_code) != 404:
                raise
        self.auth.forget_installation(installation_id)
        async with self.sessionmaker.begin() as session:
            await session.execute(
                update(Project).where(Project.installation_id == installation_id).values(installation_id=None)
            )
        raise InstallationGone(
            f"installation {installation_id} of the GitHub App is gone; "
            f"looking up the installation of {claimed.github_owner}/{claimed.github_repo} again"
        )

    async def _token_key(self, claimed: Claimed) -> str:
        if claimed.kind == CallKind.WORKFLOW_DISPATCH:
            return ACTIONS_TOKEN_KEY
        try:
            return self.auth.token_key(await self._installation_id(claimed))
        except Exception:
            return self.auth.token_key(None)

    async def _send(self, claimed: Claimed, extra: dict[str, Any]) -> None:
        installation_id = None
        if claimed.kind == CallKind.WORKFLOW_DISPATCH:
            key, client = ACTIONS_TOKEN_KEY, self.auth.actions_client(self.http)
        else:
            installation_id = await self._installation_id(claimed)
            key = self.auth.token_key(installation_id)
            client = await self._repo_client(claimed, installation_id)
        # Mutating calls for one token go one at a time.
        async with self._token_locks.setdefault(key, asyncio.Lock()):
            blocked = self._blocked_until.get(key)
            if blocked is not None and blocked > self.clock():
                raise _Release(blocked)
            try:
                if claimed.kind == CallKind.STATUS:
                    await self._send_status(claimed, client)
                elif claimed.kind == CallKind.PR_COMMENT:
                    await self._send_pr_comment(claimed, client)
                    return
                elif claimed.kind == CallKind.WORKFLOW_DISPATCH:
                    await self._send_dispatch(claimed, client)
                else:
                    raise CallFailed(f"unknown kind of GitHub call: {claimed.kind!r}")
            except gidgethub.BadRequest as exc:
                if int(exc.status_code) == 401 and installation_id is not None:
                    self.auth.forget_installation_token(installation_id)
                raise
            finally:
                # The last call used up the token's quota: let the others wait for the reset.
                if client.rate_limit is not None and client.rate_limit.remaining <= 0:
                    self._blocked_until[key] = client.rate_limit.reset_datetime
        async with self.sessionmaker.begin() as session:
            await self._finish(
                claimed, session, state=CallState.DONE, sent_at=self.clock(), last_error=None,
                attempts=claimed.attempts + 1,
            )
        log.info("sent GitHub %s call %s", claimed.kind, claimed.id, extra=extra)

    async def _send_status(self, claimed: Claimed, client: GitHubClient) -> None:
        p = claimed.payload
        await client.create_commit_status(
            claimed.github_owner,
            claimed.github_repo,
            p["sha"],
            p["state"],
            context=p["context"],
            description=p.get("description"),
            target_url=p.get("target_url"),
        )

    async def _send_dispatch(self, claimed: Claimed, client: GitHubClient) -> None:
        p = claimed.payload
        ref = p.get("ref") or await client.default_branch(claimed.github_owner, claimed.github_repo)
        await client.dispatch_workflow(claimed.github_owner, claimed.github_repo, p["workflow"], ref, p.get("inputs"))

    async def _send_pr_comment(self, claimed: Claimed, client: GitHubClient) -> None:
        p = claimed.payload
        project_id, number = int(p["project_id"]), int(p["pr_number"])
        async with self.sessionmaker() as session:
            remembered = await session.scalar(
                select(PrComment).where(PrComment.project_id == project_id, PrComment.github_pr_number == number)
            )
        result = await client.update_or_create_pr_comment(
            claimed.github_owner,
            claimed.github_repo,
            number,
            p["body"],
            marker=pr_comment_marker(p["project_name"]),
            login=await self.auth.own_login(self.http),
            comment_id=remembered.comment_id if remembered else None,
            known_sha256=remembered.body_sha256 if remembered else None,
        )
        values = {"comment_id": result.comment_id, "body_sha256": result.body_sha256, "updated_at": self.clock()}
        for _attempt in range(2):
            try:
                async with self.sessionmaker.begin() as session:
                    changed = await session.execute(
                        update(PrComment)
                        .where(PrComment.project_id == project_id, PrComment.github_pr_number == number)
                        .values(**values)
                        .execution_options(synchronize_session=False)
                    )
                    if changed.rowcount == 0:
                        session.add(
                            PrComment(
                                project_id=project_id,
                                github_owner=claimed.github_owner,
                                github_repo=claimed.github_repo,
                                github_pr_number=number,
                                **values,
                            )
                        )
                        await session.flush()
                    await self._finish(
                        claimed, session, state=CallState.DONE, sent_at=self.clock(), last_error=None,
                        attempts=claimed.attempts + 1,
                    )
                break
            except IntegrityError:
                continue
        log.info(
            "PR comment %s on %s/%s#%s: %s",
            result.comment_id, claimed.github_owner, claimed.github_repo, number, result.action.value,
            extra={"call_id": claimed.id, "comment_id": result.comment_id},
        )


def wake(app: web.Application) -> None:
    """Tell the app's sender that calls were queued (does nothing without a running sender)."""
    sender = app[SERVICES].get("sender")
    if sender is not None:
        sender.wake()


async def _run_sender(app: web.Application) -> AsyncIterator[None]:
    sender = Sender.for_app(app)
    app[SERVICES]["sender"] = sender
    task = asyncio.create_task(sender.run_forever(), name="opp_ci github sender")
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def setup(app: web.Application) -> None:
    """Keep the GitHub credentials in `app[SERVICES]["github_auth"]`; start the sender with the app."""
    app[SERVICES]["github_auth"] = GitHubAuth.from_settings(app[SETTINGS])
    if app[SERVICES]["background"]:
        app.cleanup_ctx.append(_run_sender)
