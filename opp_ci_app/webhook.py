"""`POST /api/github/webhook`: verify, route through gidgethub, queue runs in one transaction."""

from __future__ import annotations

import logging
from typing import AsyncIterator

from aiohttp import web
from gidgethub import BadRequest, ValidationFailure, sansio

from .appkeys import ENGINE, SETTINGS
from .httpjson import error
from .ingest import Ingest

log = logging.getLogger(__name__)

PATH = "/api/github/webhook"
MAX_BODY = 25 * 1024 * 1024
READ_CHUNK = 256 * 1024
SIGNATURE_HEADER = "X-Hub-Signature-256"
CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded")
GUID_MAX_LENGTH = 100
EVENT_MAX_LENGTH = 50
ACTION_MAX_LENGTH = 50
HEADER_NAMES = {"x-github-event": "X-GitHub-Event", "x-github-delivery": "X-GitHub-Delivery"}

INGEST = web.AppKey("webhook_ingest", Ingest)


class Rejected(Exception):
    """The request is refused before anything is handled; `status` is the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(request: web.Request) -> bytes:
    """The raw body, refusing (without reading on) anything over 25 MiB."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Rejected(413, f"body over {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(READ_CHUNK):
        size += len(chunk)
        if size > MAX_BODY:
            raise Rejected(413, f"body over {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def verify(request: web.Request, body: bytes, secret: str) -> sansio.Event:
    """The signed event, checked in the contract's order: signature (401), then headers and body (400)."""
    signature = request.headers.get(SIGNATURE_HEADER)
    if not signature:
        raise Rejected(401, f"missing {SIGNATURE_HEADER}")
    try:
        sansio.validate_event(body, signature=signature, secret=secret)
    except ValidationFailure:
        raise Rejected(401, f"wrong {SIGNATURE_HEADER}") from None
    content_type = request.headers.get("Content-Type", "")
    if content_type.split(";", 1)[0].strip().lower() not in CONTENT_TYPES:
        raise Rejected(400, f"content type must be one of {', '.join(CONTENT_TYPES)}")
    # The signature is checked already; gidgethub is given no signature so it does not hash the body again.
    headers = {k.lower(): v for k, v in request.headers.items() if not k.lower().startswith("x-hub-signature")}
    try:
        event = sansio.Event.from_http(headers, body)
    except KeyError as exc:
        name = HEADER_NAMES.get(exc.args[0], exc.args[0]) if exc.args else "X-GitHub-Event"
        raise Rejected(400, f"missing header {name}") from None
    except BadRequest:
        raise Rejected(400, "the body does not decode as the content type says") from None
    except RecursionError:
        raise Rejected(400, "the body is nested too deeply to decode") from None
    if not 0 < len(event.delivery_id) <= GUID_MAX_LENGTH or not 0 < len(event.event) <= EVENT_MAX_LENGTH:
        raise Rejected(400, "X-GitHub-Event or X-GitHub-Delivery is empty or too long")
    if not isinstance(event.data, dict):
        raise Rejected(400, "the payload must be a JSON object")
    action = event.data.get("action")
    if action is not None and (not isinstance(action, str) or len(action) > ACTION_MAX_LENGTH):
        raise Rejected(400, "payload field action must be a short string")
    return event


async def receive(request: web.Request) -> web.Response:
    """Verify one delivery and hand it to the group-commit ingest."""
    secret = request.app[SETTINGS].webhook_secret
    try:
        if not secret:
            raise Rejected(401, "no webhook secret is configured; deliveries cannot be verified")
        body = await read_body(request)
        event = verify(request, body, secret)
    except Rejected as exc:
        # A wrong signature usually means the secret on GitHub differs from ours: worth a warning.
        level = logging.WARNING if exc.status == 401 else logging.INFO
        log.log(level, "webhook delivery refused: %s %s", exc.status, exc.message,
                extra={"delivery": request.headers.get("X-GitHub-Delivery"), "status": exc.status})
        return error(exc.status, exc.message)
    outcome = await request.app[INGEST].submit(event)
    return web.json_response(outcome.body, status=outcome.status)


async def _ingest(app: web.Application) -> AsyncIterator[None]:
    app[INGEST] = Ingest(app[ENGINE], app[SETTINGS])
    yield
    await app[INGEST].close()


def setup(app: web.Application) -> None:
    """Register the webhook route and its ingest (one writer for SQLite)."""
    app.cleanup_ctx.append(_ingest)
    app.router.add_post(PATH, receive)
