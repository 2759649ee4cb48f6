"""`opp_ci serve`: migrate, make sure a webhook secret exists, and run the app."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .app import create_app
from .config import Settings, ensure_webhook_secret
from .db import create_engine, upgrade
from .github.manifest import with_stored_app

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    settings = ensure_webhook_secret(with_stored_app(settings))
    engine = create_engine(settings.database_url)
    asyncio.run(upgrade(engine))
    mode = "GitHub App" if settings.app_mode else ("token" if settings.github_token else "no GitHub credentials")
    log.info("serving on http://%s:%s (%s)", settings.host, settings.port, mode)
    # The engine is created again inside the server's own loop.
    asyncio.run(engine.dispose())
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None, access_log=None)
