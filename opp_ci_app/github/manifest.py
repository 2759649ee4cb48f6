"""Registering the GitHub App from `app.yml` through GitHub's manifest flow, and keeping what it returns."""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import yaml
from gidgethub import GitHubException
from gidgethub.aiohttp import GitHubAPI

from ..config import ConfigError, Settings, check_private_key, write_private_file

log = logging.getLogger(__name__)

MANIFEST_FILE = Path(__file__).resolve().parents[2] / "app.yml"
APP_FILE = "github_app.json"
KEY_FILE = "github_app.pem"
WEBHOOK_PATH = "/api/github/webhook"
CALLBACK_PATH = "/github/setup/callback"
STATE_TTL_SECONDS = 3600
USER_AGENT = "opp_ci"


class ManifestError(Exception):
    """The manifest flow cannot go on; the message says why, for the setup page."""


@dataclass(frozen=True)
class StoredApp:
    """What the manifest flow keeps of the App GitHub created."""

    app_id: str
    slug: str
    html_url: str
    private_key: str
    webhook_secret: str | None

    @property
    def install_url(self) -> str:
        return f"{self.html_url}/installations/new"


def load_manifest(settings: Settings, path: Path = MANIFEST_FILE) -> dict[str, Any]:
    """`app.yml` with its URLs pointed at OPP_CI_PUBLIC_URL."""
    try:
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"cannot read the App manifest {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"the App manifest {path} is not valid YAML: {exc}") from None
    base = settings.public_url
    manifest["url"] = base
    manifest["hook_attributes"] = {**manifest.get("hook_attributes", {}), "url": base + WEBHOOK_PATH}
    manifest["redirect_url"] = base + CALLBACK_PATH
    return manifest


def github_web_url(api_base_url: str) -> str:
    """github.com for api.github.com, `https://HOST` for GitHub Enterprise's `https://HOST/api/v3`."""
    parts = urlsplit(api_base_url)
    if parts.netloc == "api.github.com":
        return "https://github.com"
    path = parts.path.rstrip("/")
    if path.endswith("/api/v3"):
        path = path[: -len("/api/v3")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def new_app_url(settings: Settings, organization: str | None, state: str) -> str:
    """Where the manifest form is posted: the user's or an organization's "new App" page."""
    web = github_web_url(settings.github_base_url)
    if organization:
        return f"{web}/organizations/{quote(organization, safe='')}/settings/apps/new?state={state}"
    return f"{web}/settings/apps/new?state={state}"


class PendingStates:
    """One-time `state` values of started manifest flows (GitHub sends the browser back without our cookie)."""

    def __init__(self, ttl: float = STATE_TTL_SECONDS, clock=time.monotonic) -> None:
        self._ttl, self._clock = ttl, clock
        self._states: dict[str, float] = {}

    def new(self) -> str:
        now = self._clock()
        self._states = {s: t for s, t in self._states.items() if t > now}
        state = secrets.token_urlsafe(24)
        self._states[state] = now + self._ttl
        return state

    def take(self, state: str | None) -> bool:
        """True once for a state this process handed out and that has not expired."""
        expires = self._states.pop(state or "", None)
        return expires is not None and expires > self._clock()


async def exchange_code(http: aiohttp.ClientSession, settings: Settings, code: str) -> dict[str, Any]:
    """GitHub's answer to `POST /app-manifests/{code}/conversions` (id, slug, pem, webhook_secret...)."""
    gh = GitHubAPI(http, USER_AGENT, base_url=settings.github_base_url)
    try:
        answer = await gh.post("/app-manifests/{code}/conversions", url_vars={"code": code}, data=b"")
    except GitHubException as exc:
        raise ManifestError(f"GitHub refused the App registration code: {exc}") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ManifestError(f"cannot reach GitHub at {settings.github_base_url}: {exc}") from None
    if not isinstance(answer, dict) or not answer.get("id") or not answer.get("pem"):
        raise ManifestError("GitHub's answer has no App id or private key")
    return answer


def store_app(settings: Settings, answer: dict[str, Any]) -> StoredApp:
    """Keep the App's id, key and webhook secret under var/ (mode 0600) and return them."""
    try:
        check_private_key(answer["pem"], "the App's private key")
    except ConfigError as exc:
        raise ManifestError(str(exc)) from None
    stored = StoredApp(
        app_id=str(answer["id"]),
        slug=str(answer.get("slug") or ""),
        html_url=str(answer.get("html_url") or ""),
        private_key=answer["pem"],
        webhook_secret=answer.get("webhook_secret") or None,
    )
    write_private_file(settings.var_dir / KEY_FILE, stored.private_key)
    info = {"app_id": stored.app_id, "slug": stored.slug, "html_url": stored.html_url, "webhook_secret": stored.webhook_secret}
    write_private_file(settings.var_dir / APP_FILE, json.dumps(info, indent=2) + "\n")
    log.info("GitHub App %s (id %s) registered; credentials kept in %s", stored.slug, stored.app_id, settings.var_dir)
    return stored


def load_stored_app(settings: Settings) -> StoredApp | None:
    """The App the manifest flow registered earlier, if var/ holds one."""
    app_file, key_file = settings.var_dir / APP_FILE, settings.var_dir / KEY_FILE
    if not app_file.is_file() or not key_file.is_file():
        return None
    try:
        info = json.loads(app_file.read_text(encoding="utf-8"))
        key = key_file.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise ConfigError(str(app_file), f"unreadable: {exc}") from None
    check_private_key(key, str(key_file))
    return StoredApp(str(info["app_id"]), info.get("slug", ""), info.get("html_url", ""), key, info.get("webhook_secret"))


def with_stored_app(settings: Settings) -> Settings:
    """Settings in App mode from var/ when the environment configures no App of its own."""
    if settings.app_mode:
        return settings
    stored = load_stored_app(settings)
    if stored is None:
        return settings
    log.info("App mode with the GitHub App %s (id %s) registered through /github/setup", stored.slug, stored.app_id)
    # GitHub signs the App's deliveries with the secret it generated; OPP_CI_GITHUB_WEBHOOK_SECRET still wins.
    secret = settings.webhook_secret
    if not settings.webhook_secret_from_env and stored.webhook_secret:
        secret = stored.webhook_secret
    return settings.replace(
        github_app_id=stored.app_id,
        github_app_private_key=stored.private_key,
        webhook_secret=secret,
    )
