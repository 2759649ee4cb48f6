"""Typed keys for what the aiohttp application holds, in one place to avoid import cycles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

if TYPE_CHECKING:
    from .config import Settings

SETTINGS: web.AppKey["Settings"] = web.AppKey("settings")
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONMAKER: web.AppKey[async_sessionmaker[AsyncSession]] = web.AppKey("sessionmaker")
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
# Filled by the modules that own them (webhook ingest, GitHub sender, ...).
SERVICES: web.AppKey[dict[str, Any]] = web.AppKey("services")
