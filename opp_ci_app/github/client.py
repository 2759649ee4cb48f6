"""The GitHub REST calls opp_ci makes, as methods on gidgethub's aiohttp client."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import gidgethub
import gidgethub.aiohttp

from .. import statuses

API_VERSION = "2022-11-28"
REQUESTER = "opp_ci"
REQUEST_TIMEOUT = 30.0
COMMENT_MAX = 65536
COMMENT_CUT_NOTE = "\n\n… (cut to fit GitHub's limit of 65,536 characters)"
COMMENTS_PER_PAGE = 100
MARKER_TEMPLATE = "<!-- opp_ci:pr-comment:{project} -->"


def pr_comment_marker(project_name: str) -> str:
    """The hidden marker that starts the sticky comment of `project_name`."""
    return MARKER_TEMPLATE.format(project=project_name)


def cap_comment(body: str) -> str:
    """`body` cut to GitHub's comment limit, saying so when cut."""
    if len(body) <= COMMENT_MAX:
        return body
    return body[: COMMENT_MAX - len(COMMENT_CUT_NOTE)] + COMMENT_CUT_NOTE


def body_sha256(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


class CommentAction(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclasses.dataclass(frozen=True)
class CommentResult:
    """What `update_or_create_pr_comment` did, and the comment's id to remember."""

    comment_id: int
    action: CommentAction
    body_sha256: str


def _comment_lost(exc: gidgethub.BadRequest) -> bool:
    """True when the remembered comment cannot be edited by us any more (deleted, or another account's)."""
    if exc.status_code == 404:
        return True
    rate_limited = isinstance(exc, gidgethub.RateLimitExceeded) or "retry-after" in {k.lower() for k in exc.headers}
    return exc.status_code == 403 and not rate_limited and "rate limit" not in str(exc).lower()


class GitHubClient(gidgethub.aiohttp.GitHubAPI):
    """gidgethub's client with the API version pinned, a request timeout and opp_ci's calls."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        oauth_token: str | None = None,
        app_id: str | None = None,
        private_key: str | None = None,
        cache: Any = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        super().__init__(
            session,
            REQUESTER,
            oauth_token=oauth_token,
            app_id=app_id,
            private_key=private_key,
            cache=cache,
            base_url=base_url.rstrip("/"),
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def _request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes = b""
    ) -> tuple[int, Mapping[str, str], bytes]:
        headers = {**headers, "x-github-api-version": API_VERSION}
        async with self._session.request(method, url, headers=headers, data=body, timeout=self._timeout) as response:
            return response.status, response.headers, await response.read()

    # -- commit statuses ----------------------------------------------------------------------

    async def create_commit_status(
        self,
        owner: str,
        repo: str,
        sha: str,
        state: str,
        *,
        context: str,
        description: str | None = None,
        target_url: str | None = None,
    ) -> dict[str, Any]:
        """`POST /repos/{owner}/{repo}/statuses/{sha}`; the description is cut to 140 characters."""
        data: dict[str, Any] = {"state": str(state), "context": context}
        if description is not None:
            data["description"] = statuses.truncate(description)
        if target_url is not None:
            data["target_url"] = target_url
        return await self.post(
            "/repos/{owner}/{repo}/statuses/{sha}", {"owner": owner, "repo": repo, "sha": sha}, data=data
        )

    async def set_status_pending(
        self, owner: str, repo: str, sha: str, *, context: str, target_url: str | None = None, description: str = "queued"
    ) -> dict[str, Any]:
        return await self.create_commit_status(
            owner, repo, sha, statuses.State.PENDING, context=context, description=description, target_url=target_url
        )

    async def set_status_from_run(
        self, owner: str, repo: str, sha: str, *, context: str, run_statuses: Iterable, target_url: str | None = None
    ) -> dict[str, Any]:
        """The status aggregated from a matrix run's run statuses."""
        state, description = statuses.aggregate(run_statuses)
        return await self.create_commit_status(
            owner, repo, sha, state, context=context, description=description, target_url=target_url
        )

    # -- the sticky PR comment ----------------------------------------------------------------

    async def create_pr_comment(self, owner: str, repo: str, number: int, body: str) -> dict[str, Any]:
        return await self.post(
            "/repos/{owner}/{repo}/issues/{number}/comments",
            {"owner": owner, "repo": repo, "number": number},
            data={"body": cap_comment(body)},
        )

    async def edit_pr_comment(self, owner: str, repo: str, comment_id: int, body: str) -> dict[str, Any]:
        return await self.patch(
            "/repos/{owner}/{repo}/issues/comments/{comment_id}",
            {"owner": owner, "repo": repo, "comment_id": comment_id},
            data={"body": cap_comment(body)},
        )

    async def find_own_comment(
        self, owner: str, repo: str, number: int, marker: str, login: str
    ) -> dict[str, Any] | None:
        """The first comment on the PR by `login` that holds `marker`, searching every page."""
        async for comment in self.getiter(
            "/repos/{owner}/{repo}/issues/{number}/comments{?per_page}",
            {"owner": owner, "repo": repo, "number": number, "per_page": COMMENTS_PER_PAGE},
        ):
            author = (comment.get("user") or {}).get("login") or ""
            if author.lower() == login.lower() and marker in (comment.get("body") or ""):
                return comment
        return None

    async def update_or_create_pr_comment(
        self,
        owner: str,
        repo: str,
        number: int,
        body: str,
        *,
        marker: str,
        login: str,
        comment_id: int | None = None,
        known_sha256: str | None = None,
    ) -> CommentResult:
        """Keep one comment holding `marker` up to date; `comment_id`/`known_sha256` are what was remembered."""
        if marker not in body:
            body = f"{marker}\n{body}"
        body = cap_comment(body)
        digest = body_sha256(body)
        if comment_id is not None:
            if known_sha256 == digest:
                return CommentResult(comment_id, CommentAction.UNCHANGED, digest)
            try:
                await self.edit_pr_comment(owner, repo, comment_id, body)
                return CommentResult(comment_id, CommentAction.UPDATED, digest)
            except gidgethub.BadRequest as exc:
                if not _comment_lost(exc):
                    raise
                # Deleted, or written by another account (token mode before App mode): find ours, else start afresh.
        found = await self.find_own_comment(owner, repo, number, marker, login)
        if found is not None:
            if found.get("body") == body:
                return CommentResult(found["id"], CommentAction.UNCHANGED, digest)
            await self.edit_pr_comment(owner, repo, found["id"], body)
            return CommentResult(found["id"], CommentAction.UPDATED, digest)
        created = await self.create_pr_comment(owner, repo, number, body)
        return CommentResult(created["id"], CommentAction.CREATED, digest)

    # -- reads (conditional through the cache) ------------------------------------------------

    async def get_pr(self, owner: str, repo: str, number: int) -> dict[str, Any]:
        return await self.getitem("/repos/{owner}/{repo}/pulls/{number}", {"owner": owner, "repo": repo, "number": number})

    async def get_commit(self, owner: str, repo: str, ref: str) -> dict[str, Any]:
        return await self.getitem("/repos/{owner}/{repo}/commits/{ref}", {"owner": owner, "repo": repo, "ref": ref})

    async def get_repo(self, owner: str, repo: str) -> dict[str, Any]:
        return await self.getitem("/repos/{owner}/{repo}", {"owner": owner, "repo": repo})

    async def default_branch(self, owner: str, repo: str) -> str:
        return (await self.get_repo(owner, repo))["default_branch"]

    # -- actions ------------------------------------------------------------------------------

    async def dispatch_workflow(
        self, owner: str, repo: str, workflow: str, ref: str, inputs: dict[str, Any] | None = None
    ) -> None:
        """`workflow_dispatch` of `workflow` on `ref`; GitHub answers 204 (or 200 with run details)."""
        data: dict[str, Any] = {"ref": ref}
        if inputs:
            data["inputs"] = inputs
        await self.post(
            "/repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches",
            {"owner": owner, "repo": repo, "workflow": workflow},
            data=data,
        )
