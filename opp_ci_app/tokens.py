"""API tokens: created once, stored only as a SHA-256 hash, each with a role."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .catalog import Invalid, NotFound
from .models import ApiToken, Role, utcnow

TOKEN_PREFIX = "oppci_"
SHOWN_CHARS = 10


def hash_token(token: str) -> str:
    """Tokens carry 256 random bits, so a plain SHA-256 is enough to store them."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise Invalid(f"role must be one of {', '.join(r.value for r in Role)}", "role") from None


async def create_token(session: AsyncSession, role: Role | str, name: str | None = None) -> tuple[ApiToken, str]:
    """A new token row and the token itself, which is never stored and never shown again."""
    role = parse_role(role) if isinstance(role, str) else role
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, role=role, token_hash=hash_token(token), prefix=token[:SHOWN_CHARS])
    session.add(row)
    await session.flush()
    return row, token


async def lookup(session: AsyncSession, token: str) -> ApiToken | None:
    """The live (unrevoked) token row for `token`, if any."""
    row = await session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        return None
    return row


async def list_tokens(session: AsyncSession) -> list[ApiToken]:
    return list(await session.scalars(select(ApiToken).order_by(ApiToken.id)))


async def revoke(session: AsyncSession, token_id: int) -> ApiToken:
    row = await session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"no token with id {token_id}", "id")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    await session.flush()
    return row


def masked(row: ApiToken) -> str:
    return f"{row.prefix}…"
