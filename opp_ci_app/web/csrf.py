"""Per-session CSRF tokens for every form."""

from __future__ import annotations

import hmac
import secrets
from typing import Mapping

from aiohttp import web
from aiohttp_session import get_session

CSRF_FIELD = "csrf_token"
SESSION_CSRF = "csrf"


async def csrf_token(request: web.Request) -> str:
    """This session's CSRF token, created on first use; put it in a hidden `csrf_token` field."""
    session = await get_session(request)
    token = session.get(SESSION_CSRF)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[SESSION_CSRF] = token
    return token


async def csrf_valid(request: web.Request, form: Mapping[str, object]) -> bool:
    """True when the form carries this session's CSRF token."""
    session = await get_session(request)
    expected = session.get(SESSION_CSRF)
    given = form.get(CSRF_FIELD)
    if not isinstance(expected, str) or not expected or not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
