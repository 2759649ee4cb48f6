"""JSON helpers for the REST API: reading bodies, and errors as `{"error", "field"}`."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from .catalog import CatalogError

log = logging.getLogger(__name__)

MAX_JSON_BODY = 1024 * 1024
READ_CHUNK = 256 * 1024


class BadBody(Exception):
    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.field, self.status = message, field, status


def error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


async def read_json_object(request: web.Request, max_bytes: int = MAX_JSON_BODY) -> dict[str, Any]:
    """The request body as a JSON object: over `max_bytes` is a 413, anything else wrong a 400."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BadBody(f"request body over {max_bytes} bytes", status=413)
    raw = bytearray()
    while chunk := await request.content.read(READ_CHUNK):
        raw += chunk
        if len(raw) > max_bytes:
            raise BadBody(f"request body over {max_bytes} bytes", status=413)
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise BadBody("body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError, JSONDecodeError and the int-size limit
        raise BadBody(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadBody("body must be a JSON object")
    return data


def int_param(request: web.Request, name: str) -> int:
    """A path parameter as an int; anything else is a 404 (no such resource)."""
    raw = request.match_info[name]
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no such {name}: {raw!r}"}), content_type="application/json")
    if not 0 < value < 2**63:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no such {name}: {raw!r}"}), content_type="application/json")
    return value


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """API errors as JSON; an unexpected exception is logged and answered without a trace."""
    try:
        return await handler(request)
    except BadBody as exc:
        return error(exc.status, exc.message, exc.field)
    except CatalogError as exc:
        return error(exc.status, exc.message, exc.field)
    except web.HTTPException as exc:
        if request.path.startswith("/api/") and exc.content_type != "application/json" and exc.status >= 400:
            return error(exc.status, exc.reason)
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        if request.path.startswith("/api/"):
            return error(500, "internal error; see the server log")
        raise
