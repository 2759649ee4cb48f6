"""Settings read once from the environment; secrets may come from `<NAME>_FILE`."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///var/opp_ci.db"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8080"
DEFAULT_GITHUB_BASE_URL = "https://api.github.com"
VAR_DIR = Path("var")
WEBHOOK_SECRET_FILE = VAR_DIR / "webhook_secret"
TOKEN_FILE_DEFAULT = "~/.ssh/opp_ci_github_token"
ACTIONS_TOKEN_FILE_DEFAULT = "~/.ssh/opp_ci_github_actions_token"
SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")


class ConfigError(Exception):
    """A configuration value is unusable; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment."""

    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = DEFAULT_PUBLIC_URL
    webhook_secret: str | None = None
    # True when OPP_CI_GITHUB_WEBHOOK_SECRET (or its _FILE) set it: then it wins over the App's own secret.
    webhook_secret_from_env: bool = False
    github_base_url: str = DEFAULT_GITHUB_BASE_URL
    github_token: str | None = dataclasses.field(default=None, repr=False)
    github_app_id: str | None = None
    github_app_private_key: str | None = dataclasses.field(default=None, repr=False)
    github_actions_token: str | None = dataclasses.field(default=None, repr=False)
    status_context: str = "opp_ci"
    notes_workflow: str = "ci-notes.yml"
    worker_lease_seconds: int = 300
    web_require_login: bool = False
    var_dir: Path = VAR_DIR

    @property
    def app_mode(self) -> bool:
        """True when the app authenticates as a GitHub App."""
        return bool(self.github_app_id and self.github_app_private_key)

    def replace(self, **changes) -> "Settings":
        """A copy with some values changed."""
        return dataclasses.replace(self, **changes)

    def use_github_app(self, app_id: str, private_key: str, webhook_secret: str | None = None) -> None:
        """Switch these (shared) settings to App mode in place, as the manifest flow does at run time."""
        check_private_key(private_key)
        object.__setattr__(self, "github_app_id", str(app_id))
        object.__setattr__(self, "github_app_private_key", private_key)
        if webhook_secret and not self.webhook_secret_from_env:
            object.__setattr__(self, "webhook_secret", webhook_secret)


def _read_secret(env: Mapping[str, str], name: str, default_file: str | None = None) -> str | None:
    """The variable itself, else the file named by `<name>_FILE`, else the default file."""
    value = env.get(name)
    if value:
        return value.strip()
    file_name = env.get(f"{name}_FILE")
    variable = f"{name}_FILE"
    if not file_name:
        if default_file is None:
            return None
        path = Path(default_file).expanduser()
        if not path.is_file():
            return None
        file_name, variable = str(path), name
    try:
        text = Path(file_name).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(variable, f"cannot read {file_name}: {exc.strerror}") from None
    return text or None


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    try:
        parts = urlsplit(value)
        parts.port  # raises on a port out of range
    except ValueError as exc:
        raise ConfigError(name, f"not a URL ({exc}): {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(name, f"not an http(s) URL: {value!r}")
    return value.rstrip("/")


def _database_url(env: Mapping[str, str]) -> str:
    name = "OPP_CI_DATABASE_URL"
    value = env.get(name) or DEFAULT_DATABASE_URL
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):  # ValueError: a malformed host or port
        raise ConfigError(name, "not a database URL") from None
    if url.drivername not in SUPPORTED_DRIVERS:
        raise ConfigError(name, f"driver {url.drivername!r} is not one of {', '.join(SUPPORTED_DRIVERS)}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"not a whole number: {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low} and {high}")
    return value


def check_private_key(pem: str, variable: str = "OPP_CI_GITHUB_APP_PRIVATE_KEY") -> None:
    """Raise ConfigError unless `pem` is a PEM-encoded RSA private key."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(variable, "not a PEM-encoded private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(variable, "not an RSA key (GitHub Apps sign with RS256)")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every variable; raise ConfigError on the first bad one."""
    env = os.environ if env is None else env
    app_id = env.get("OPP_CI_GITHUB_APP_ID") or None
    if app_id is not None and not app_id.strip().isdigit():
        raise ConfigError("OPP_CI_GITHUB_APP_ID", "must be the App's numeric id")
    private_key = _read_secret(env, "OPP_CI_GITHUB_APP_PRIVATE_KEY")
    if private_key is not None:
        check_private_key(private_key)
    if (app_id is None) != (private_key is None):
        missing = "OPP_CI_GITHUB_APP_PRIVATE_KEY" if private_key is None else "OPP_CI_GITHUB_APP_ID"
        raise ConfigError(missing, "App mode needs both the App id and its private key")
    webhook_secret = _read_secret(env, "OPP_CI_GITHUB_WEBHOOK_SECRET")
    context = env.get("OPP_CI_GITHUB_STATUS_CONTEXT") or "opp_ci"
    if len(context) > 100:
        raise ConfigError("OPP_CI_GITHUB_STATUS_CONTEXT", "longer than 100 characters")
    return Settings(
        database_url=_database_url(env),
        host=env.get("OPP_CI_HOST") or "127.0.0.1",
        port=_int(env, "OPP_CI_PORT", 8080, 0, 65535),
        public_url=_url(env, "OPP_CI_PUBLIC_URL", DEFAULT_PUBLIC_URL),
        webhook_secret=webhook_secret,
        webhook_secret_from_env=webhook_secret is not None,
        github_base_url=_url(env, "OPP_CI_GITHUB_BASE_URL", DEFAULT_GITHUB_BASE_URL),
        github_token=_read_secret(env, "OPP_CI_GITHUB_TOKEN", TOKEN_FILE_DEFAULT),
        github_app_id=app_id.strip() if app_id else None,
        github_app_private_key=private_key,
        github_actions_token=_read_secret(env, "OPP_CI_GITHUB_ACTIONS_TOKEN", ACTIONS_TOKEN_FILE_DEFAULT),
        status_context=context,
        notes_workflow=env.get("OPP_CI_NOTES_WORKFLOW") or "ci-notes.yml",
        worker_lease_seconds=_int(env, "OPP_CI_WORKER_LEASE_SECONDS", 300, 5, 86400),
        web_require_login=(env.get("OPP_CI_WEB_REQUIRE_LOGIN") or "0").lower() in ("1", "true", "yes"),
        var_dir=Path(env.get("OPP_CI_VAR_DIR") or VAR_DIR),
    )


def write_private_file(path: Path, content: str) -> None:
    """Write `content` to `path` readable by the owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)
    os.chmod(path, 0o600)


def ensure_webhook_secret(settings: Settings) -> Settings:
    """Settings with a webhook secret, generating one into var/ when none is configured."""
    if settings.webhook_secret:
        return settings
    path = settings.var_dir / WEBHOOK_SECRET_FILE.name
    if path.is_file():
        secret = path.read_text(encoding="utf-8").strip()
        if secret:
            log.info("webhook secret read from %s", path)
            return settings.replace(webhook_secret=secret)
    secret = secrets.token_hex(32)
    write_private_file(path, secret + "\n")
    log.warning("no OPP_CI_GITHUB_WEBHOOK_SECRET set: generated one into %s (enter it on GitHub)", path)
    return settings.replace(webhook_secret=secret)
