"""The aiohttp application: one database engine and one HTTP client session for its lifetime."""

from __future__ import annotations

import logging
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from . import api, notes, webhook, workers
from .appkeys import ENGINE, HTTP_SESSION, SERVICES, SESSIONMAKER, SETTINGS
from .config import Settings
from .db import create_engine, sessionmaker
from .github import sender
from .httpjson import json_errors
from .web import github_setup, pages

log = logging.getLogger(__name__)

# Webhook bodies may be up to 25 MiB; the webhook handler enforces its own limit.
CLIENT_MAX_SIZE = 26 * 1024 * 1024


async def _database(app: web.Application) -> AsyncIterator[None]:
    if ENGINE not in app:
        app[ENGINE] = create_engine(app[SETTINGS].database_url)
        owns_engine = True
    else:
        owns_engine = False
    app[SESSIONMAKER] = sessionmaker(app[ENGINE])
    yield
    if owns_engine:
        await app[ENGINE].dispose()


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    app[HTTP_SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, connect=10))
    yield
    await app[HTTP_SESSION].close()


def create_app(settings: Settings, *, engine=None, background: bool = True) -> web.Application:
    """The whole app; `background=False` leaves out the sender and reaper tasks (for tests)."""
    app = web.Application(middlewares=[json_errors], client_max_size=CLIENT_MAX_SIZE)
    app[SETTINGS] = settings
    app[SERVICES] = {"background": background}
    if engine is not None:
        app[ENGINE] = engine
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_http_session)
    app.router.add_routes(api.routes)
    webhook.setup(app)
    workers.setup(app)
    sender.setup(app)
    notes.setup(app)
    pages.setup(app)
    github_setup.setup(app)
    return app
