"""`opp_ci serve`: migrate, make sure a webhook secret exists, and run the app."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from aiohttp import web

from .app import create_app
from .cli import Failure
from .config import Settings, ensure_webhook_secret
from .db import create_engine, upgrade
from .github.manifest import with_stored_app

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 128


async def _migrate(database_url: str) -> None:
    """Migrate on an engine that lives and dies in this one loop (the server makes its own)."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


def _reason(exc: OSError) -> str:
    """'address already in use' rather than the long wording of the same."""
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        return (exc.strerror or str(exc)).lower()
    return os.strerror(exc.errno).lower()


def _listen(host: str, port: int) -> list[socket.socket]:
    """Bind every address `host` names, before the app starts its background tasks."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, *_, address in dict.fromkeys(infos):
            sockets.append(socket.create_server(address, family=family, backlog=LISTEN_BACKLOG))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def serve(settings: Settings) -> None:
    settings = ensure_webhook_secret(with_stored_app(settings))
    asyncio.run(_migrate(settings.database_url))
    try:
        sockets = _listen(settings.host, settings.port)
    except OSError as exc:
        raise Failure(f"cannot listen on {settings.host}:{settings.port}: {_reason(exc)}") from None
    mode = "GitHub App" if settings.app_mode else ("token" if settings.github_token else "no GitHub credentials")
    port = sockets[0].getsockname()[1]  # the one the system chose for port 0

    def started(_banner: str) -> None:
        log.info("serving on http://%s:%s (%s)", settings.host, port, mode)

    web.run_app(create_app(settings), sock=sockets, print=started, access_log=None)
