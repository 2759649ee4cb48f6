"""Login sessions: an encrypted cookie whose Fernet key lives in var/, the admin token behind it re-checked per request."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp_session import Session, get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

from ..appkeys import SESSIONMAKER, SETTINGS
from ..config import write_private_file
from ..models import ApiToken, Role

log = logging.getLogger(__name__)

SESSION_KEY_FILE = "session_key"
COOKIE_NAME = "opp_ci_session"
SESSION_MAX_AGE = 12 * 3600
TOKEN_ID = "token_id"
FLASHES = "flashes"
# Paths that never touch the session (the REST API and the webhook authenticate otherwise).
NO_SESSION_PREFIXES = ("/api/",)

_ADMIN = web.RequestKey("web_admin", object)
_NOBODY = object()


def session_key(var_dir: Path) -> bytes:
    """The Fernet key in `var_dir/session_key`, generated (mode 0600) when missing or unusable."""
    path = var_dir / SESSION_KEY_FILE
    if path.is_file():
        key = path.read_text(encoding="utf-8").strip().encode()
        try:
            Fernet(key)
            return key
        except ValueError:
            log.warning("%s does not hold a Fernet key: generating a new one; everyone must log in again", path)
    key = Fernet.generate_key()
    write_private_file(path, key.decode() + "\n")
    log.info("generated the web session key into %s", path)
    return key


def setup_sessions(app: web.Application) -> None:
    """Install the encrypted cookie session for every path outside /api/."""
    settings = app[SETTINGS]
    storage = EncryptedCookieStorage(
        Fernet(session_key(settings.var_dir)),
        cookie_name=COOKIE_NAME,
        max_age=SESSION_MAX_AGE,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=settings.public_url.startswith("https://"),
    )
    with_session = session_middleware(storage)

    @web.middleware
    async def sessions(request: web.Request, handler) -> web.StreamResponse:
        if request.path.startswith(NO_SESSION_PREFIXES):
            return await handler(request)
        return await with_session(request, handler)

    app.middlewares.append(sessions)


async def current_admin(request: web.Request) -> ApiToken | None:
    """The admin token this browser logged in with, if it is still live and still an admin's."""
    cached = request.get(_ADMIN)
    if cached is not None:
        return None if cached is _NOBODY else cached
    session = await get_session(request)
    token_id = session.get(TOKEN_ID)
    row = None
    if isinstance(token_id, int):
        async with request.app[SESSIONMAKER]() as db:
            row = await db.get(ApiToken, token_id)
        if row is None or row.revoked_at is not None or not row.role.allows(Role.ADMIN):
            log.info("web session of token %s ended: token revoked, deleted or no longer admin", token_id)
            del session[TOKEN_ID]
            row = None
    request[_ADMIN] = row if row is not None else _NOBODY
    return row


async def log_in(request: web.Request, row: ApiToken) -> Session:
    """Start a fresh session for `row` (its id is stored, never the token)."""
    session = await new_session(request)
    session[TOKEN_ID] = row.id
    request[_ADMIN] = row
    return session


async def log_out(request: web.Request) -> Session:
    """Forget the login and everything else in the session."""
    session = await get_session(request)
    session.invalidate()
    request[_ADMIN] = _NOBODY
    return session


async def flash(request: web.Request, message: str, kind: str = "ok") -> None:
    """A message shown once, on the next page rendered (kind: ok | error)."""
    session = await get_session(request)
    session[FLASHES] = [*session.get(FLASHES, []), {"kind": kind, "message": message}]


async def pop_flashes(request: web.Request) -> list[dict[str, Any]]:
    session = await get_session(request)
    return session.pop(FLASHES, []) if FLASHES in session else []
