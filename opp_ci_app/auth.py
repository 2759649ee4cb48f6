"""Bearer-token authentication for the REST API: 401 without a valid token, 403 below the role."""

from __future__ import annotations

import functools
from typing import Awaitable, Callable

from aiohttp import web

from . import tokens
from .appkeys import SESSIONMAKER
from .models import ApiToken, Role

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TOKEN_KEY = web.RequestKey("api_token", ApiToken)


def _error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="opp_ci"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


async def authenticate(request: web.Request) -> ApiToken | None:
    """The token row named by the request's `Authorization: Bearer` header, if valid."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    async with request.app[SESSIONMAKER]() as session:
        return await tokens.lookup(session, value.strip())


def require_role(role: Role) -> Callable[[Handler], Handler]:
    """Let a handler run only for a token of at least `role`."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            row = await authenticate(request)
            if row is None:
                return _error(401, "a valid API token is required (Authorization: Bearer <token>)")
            if not row.role.allows(role):
                return _error(403, f"this needs a token with role {role.value}; yours is {row.role.value}")
            request[TOKEN_KEY] = row
            return await handler(request)

        wrapper.required_role = role  # type: ignore[attr-defined]
        return wrapper

    return decorate
