"""Who the app is on GitHub: a token, or a GitHub App with per-installation tokens; replaceable at run time."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import cachetools

from ..config import Settings
from .client import REQUEST_TIMEOUT, GitHubClient

log = logging.getLogger(__name__)

# Installation tokens live an hour; mint a new one this long before the old one expires.
TOKEN_REFRESH_MARGIN = 5 * 60
TOKEN_CACHE_SIZE = 1024
READ_CACHE_SIZE = 512
REDACTED = "[redacted]"
_KEEP: Any = object()


class AuthMode(enum.StrEnum):
    NONE = "none"
    TOKEN = "token"
    APP = "app"


class NotConfigured(Exception):
    """No GitHub credentials (or no Actions token for a dispatch)."""


def _expires_epoch(expires_at: str) -> float:
    return dt.datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp()


class GitHubAuth:
    """The app's GitHub credentials, kept in one object so they can be switched while it runs.

    Token mode uses one token for everything; App mode signs JWTs with the App's key (an App client of
    its own) and mints one installation token per installation, cached until 5 minutes before it
    expires. The Actions token is only ever used for `workflow_dispatch`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        app_id: str | int | None = None,
        private_key: str | None = None,
        actions_token: str | None = None,
        clock: Callable[[], float] = time.time,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.request_timeout = request_timeout
        # One cache of conditional GETs (ETag) for every client this object hands out.
        self.read_cache: cachetools.LRUCache = cachetools.LRUCache(maxsize=READ_CACHE_SIZE)
        self.actions_token = actions_token
        self.configure(token=token, app_id=app_id, private_key=private_key)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "GitHubAuth":
        return cls(
            settings.github_base_url,
            token=None if settings.app_mode else settings.github_token,
            app_id=settings.github_app_id if settings.app_mode else None,
            private_key=settings.github_app_private_key if settings.app_mode else None,
            actions_token=settings.github_actions_token,
            **kwargs,
        )

    def configure(
        self,
        *,
        token: str | None = None,
        app_id: str | int | None = None,
        private_key: str | None = None,
        actions_token: str | None = _KEEP,
    ) -> None:
        """Switch to token mode (`token=`), App mode (`app_id=`, `private_key=` PEM) or neither.

        Cached installation tokens, installation ids and the app's login are forgotten. The Actions
        token is left as it is unless `actions_token=` is given.
        """
        if token is not None and (app_id is not None or private_key is not None):
            raise ValueError("a token or an App id with its key, not both")
        if (app_id is None) != (private_key is None):
            raise ValueError("App mode needs both the App id and its private key")
        self._token = token or None
        self._app_id = str(app_id) if app_id is not None else None
        self._private_key = private_key
        if actions_token is not _KEEP:
            self.actions_token = actions_token or None
        self._installation_tokens: cachetools.TLRUCache = cachetools.TLRUCache(
            maxsize=TOKEN_CACHE_SIZE, ttu=self._token_expiry, timer=self.clock
        )
        self._mint_locks: dict[int, asyncio.Lock] = {}
        self._installation_ids: dict[str, int] = {}
        self._login: str | None = None
        log.info("GitHub credentials: %s mode", self.mode.value)

    @property
    def mode(self) -> AuthMode:
        if self._app_id is not None:
            return AuthMode.APP
        if self._token:
            return AuthMode.TOKEN
        return AuthMode.NONE

    @property
    def app_id(self) -> str | None:
        return self._app_id

    def secrets(self) -> list[str]:
        """Every credential this object knows, for redaction."""
        minted = [token for token, _expires in self._installation_tokens.values()]
        values = [self._token, self._private_key, self.actions_token, *minted]
        return [v for v in values if v]

    def redact(self, text: str) -> str:
        """`text` with every known credential replaced."""
        for secret in self.secrets():
            text = text.replace(secret, REDACTED)
        return text

    def _client(self, session: aiohttp.ClientSession, **credentials: Any) -> GitHubClient:
        return GitHubClient(
            session, base_url=self.base_url, cache=self.read_cache, timeout=self.request_timeout, **credentials
        )

    def app_client(self, session: aiohttp.ClientSession) -> GitHubClient:
        """A client that authenticates as the App itself (JWT), kept apart from installation clients."""
        if self.mode is not AuthMode.APP:
            raise NotConfigured("not in App mode")
        return self._client(session, app_id=self._app_id, private_key=self._private_key)

    def actions_client(self, session: aiohttp.ClientSession) -> GitHubClient:
        """A client with the Actions token, for `workflow_dispatch` only."""
        if not self.actions_token:
            raise NotConfigured("no OPP_CI_GITHUB_ACTIONS_TOKEN configured")
        return self._client(session, oauth_token=self.actions_token)

    # -- installations ------------------------------------------------------------------------

    async def installation_id(self, session: aiohttp.ClientSession, owner: str, repo: str) -> int:
        """The App's installation on `owner/repo` (`GET /repos/{o}/{r}/installation`), remembered."""
        key = f"{owner}/{repo}".lower()
        if key not in self._installation_ids:
            data = await self.app_client(session).getitem(
                "/repos/{owner}/{repo}/installation", {"owner": owner, "repo": repo}
            )
            self._installation_ids[key] = int(data["id"])
        return self._installation_ids[key]

    def _token_expiry(self, _key: int, value: tuple[str, float], _now: float) -> float:
        return value[1] - TOKEN_REFRESH_MARGIN

    async def installation_token(self, session: aiohttp.ClientSession, installation_id: int) -> str:
        """A token of the installation, minted at most once at a time and reused until near expiry."""
        installation_id = int(installation_id)
        cached = self._installation_tokens.get(installation_id)
        if cached is not None:
            return cached[0]
        lock = self._mint_locks.setdefault(installation_id, asyncio.Lock())
        async with lock:
            cached = self._installation_tokens.get(installation_id)
            if cached is not None:
                return cached[0]
            data = await self.app_client(session).post(
                "/app/installations/{installation_id}/access_tokens",
                {"installation_id": installation_id},
                data=b"",
            )
            token = data["token"]
            self._installation_tokens[installation_id] = (token, _expires_epoch(data["expires_at"]))
            log.info("minted an installation token", extra={"installation_id": installation_id})
            return token

    def forget_installation_token(self, installation_id: int) -> None:
        """Drop a cached token GitHub no longer accepts."""
        self._installation_tokens.pop(int(installation_id), None)

    def forget_installation(self, installation_id: int) -> None:
        """Forget an installation GitHub says is gone: its token and the repositories it was known for."""
        self.forget_installation_token(installation_id)
        for repo, known in list(self._installation_ids.items()):
            if known == int(installation_id):
                del self._installation_ids[repo]

    # -- clients for repositories -------------------------------------------------------------

    def token_key(self, installation_id: int | None) -> str:
        """Names the token a repository call would use, for one-at-a-time sending per token."""
        if self.mode is AuthMode.APP:
            return f"installation:{installation_id}"
        return "token"

    async def repo_client(self, session: aiohttp.ClientSession, installation_id: int | None = None) -> GitHubClient:
        """A client for statuses and comments: the token, or the installation's token in App mode."""
        if self.mode is AuthMode.TOKEN:
            return self._client(session, oauth_token=self._token)
        if self.mode is AuthMode.APP:
            if installation_id is None:
                raise ValueError("App mode needs the installation id")
            return self._client(session, oauth_token=await self.installation_token(session, installation_id))
        raise NotConfigured("no GitHub credentials configured")

    async def own_login(self, session: aiohttp.ClientSession) -> str:
        """The login our comments are written by: `<slug>[bot]` for the App, else the token's user."""
        if self._login is None:
            if self.mode is AuthMode.APP:
                app = await self.app_client(session).getitem("/app")
                self._login = f"{app['slug']}[bot]"
            else:
                user = await (await self.repo_client(session)).getitem("/user")
                self._login = user["login"]
        return self._login
