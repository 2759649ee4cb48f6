"""What every page shares: rendering with the base template, error pages, admin forms, the login gate."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
from aiohttp import web
from multidict import MultiDictProxy
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from ..appkeys import SESSIONMAKER, SETTINGS
from ..github.manifest import github_web_url
from ..github.sender import NEEDS_CREDENTIALS
from ..models import CallState, GitHubCall
from .csrf import CSRF_FIELD, csrf_token, csrf_valid
from .filters import FILTERS
from .session import current_admin, pop_flashes, setup_sessions

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
MAX_FORM_BYTES = 64 * 1024
# Pages outside the login gate of OPP_CI_WEB_REQUIRE_LOGIN (the API has its own tokens).
PUBLIC_PATHS = frozenset({"/login", "/healthz"})
PUBLIC_PREFIXES = ("/api/", "/static/")
# The header's links; a link is shown only once its route exists (GitHub setup comes from another module).
NAV = (("/", "Home"), ("/runs", "Runs"), ("/rules", "Rules"), ("/deliveries", "Deliveries"), ("/github/setup", "GitHub App"))
SETUP_PATH = "/github/setup"
CSP = "default-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
ERROR_TITLES = {
    400: "Bad request",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    500: "Something went wrong",
}
CSRF_MESSAGE = (
    "This form's security token is missing or out of date, so nothing was changed. "
    "Go back, reload the page and try again."
)
LOGIN_MESSAGE = "Changes need an admin login, so nothing was changed. Log in with an admin token and try again."

FormHandler = Callable[[web.Request, MultiDictProxy], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_exists(app: web.Application, path: str) -> bool:
    return any(r.canonical == path for r in app.router.resources())


def github_connected(request: web.Request) -> bool:
    """True when statuses and comments can be sent: a token, or the App (which can switch on at run time)."""
    settings = request.app[SETTINGS]
    return bool(settings.app_mode or settings.github_token)


async def github_waiting(request: web.Request, admin: object) -> dict[str, Any] | None:
    """For the not-connected banner: how many calls wait for credentials; None when connected (no query then)."""
    settings = request.app[SETTINGS]
    if github_connected(request) or (settings.web_require_login and admin is None):
        return None
    try:
        async with request.app[SESSIONMAKER]() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(GitHubCall)
                .where(GitHubCall.state == CallState.PENDING, GitHubCall.kind.in_(NEEDS_CREDENTIALS))
            )
    except (SQLAlchemyError, OSError):
        log.exception("could not count the GitHub calls waiting for credentials")
        count = None
    return {"count": count, "setup_url": SETUP_PATH if _route_exists(request.app, SETUP_PATH) else None}


async def base_context(request: web.Request) -> dict[str, Any]:
    """What base.html needs: the admin (or None), the CSRF token, one-time messages, the header's links."""
    nav = [(href, label) for href, label in NAV if _route_exists(request.app, href)]
    admin = await current_admin(request)
    return {
        "request": request,
        "admin": admin,
        "github_waiting": await github_waiting(request, admin),
        "csrf_token": await csrf_token(request),
        "csrf_field": CSRF_FIELD,
        "flashes": await pop_flashes(request),
        "nav": nav,
        "current_path": request.path,
        "static_url": lambda name: str(request.app.router["static"].url_for(filename=name)),
    }


async def render(
    request: web.Request, template: str, context: Mapping[str, Any] | None = None, *, status: int = 200
) -> web.Response:
    """Render `template` (which extends base.html) with the shared context plus `context`."""
    full = await base_context(request)
    full.update(context or {})
    return aiohttp_jinja2.render_template(template, request, full, status=status)


async def error_page(request: web.Request, status: int, message: str, title: str | None = None) -> web.Response:
    """A page (not a stack trace) saying what went wrong."""
    title = title or ERROR_TITLES.get(status, "Error")
    return await render(request, "error.html", {"status": status, "title": title, "message": message}, status=status)


def login_url(next_path: str) -> str:
    return f"/login?next={quote(next_path, safe='/')}"


def safe_next(value: object, default: str = "/") -> str:
    """A local path to go back to after logging in; anything else (other sites included) gives `default`."""
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or value.startswith(("//", "/\\"))
        or not value.isprintable()
    ):
        return default
    return value


async def read_form(request: web.Request) -> MultiDictProxy | web.Response:
    """The posted form, or a 413 page when it is unreasonably large."""
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        return await error_page(request, 413, "That form is larger than any form here sends.")
    return await request.post()


def csrf_protected(handler: FormHandler) -> Handler:
    """A POST handler whose form must carry the session's CSRF token (login itself uses this)."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        form = await read_form(request)
        if isinstance(form, web.Response):
            return form
        if not await csrf_valid(request, form):
            log.warning("refused %s %s: missing or wrong CSRF token", request.method, request.path)
            return await error_page(request, 403, CSRF_MESSAGE, "Form expired or not sent from this site")
        return await handler(request, form)

    return wrapper


def admin_form(handler: FormHandler) -> Handler:
    """A POST handler that changes something: CSRF token and a logged-in admin session, else a 403 page."""

    @functools.wraps(handler)
    async def checked(request: web.Request, form: MultiDictProxy) -> web.StreamResponse:
        if await current_admin(request) is None:
            return await error_page(request, 403, LOGIN_MESSAGE, "Admin login needed")
        return await handler(request, form)

    return csrf_protected(checked)


def admin_page(handler: Handler) -> Handler:
    """A GET page only admins may see: others are sent to the login page and back."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        if await current_admin(request) is None:
            raise web.HTTPSeeOther(login_url(request.path_qs))
        return await handler(request)

    return wrapper


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors outside /api/ as pages: 404, 405 and the rest; an unexpected exception is logged, never shown."""
    if request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        default_text = f"{exc.status}: {exc.reason}"
        message = exc.text if exc.text and exc.text != default_text and exc.content_type == "text/plain" else None
        if exc.status == 404:
            message = message or f"There is no page at {request.path}."
        elif exc.status == 405:
            message = message or f"{request.method} is not how {request.path} is used."
        return await error_page(request, exc.status, message or exc.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return await error_page(request, 500, "The error was logged on the server. Try again, or tell the operator.")


@web.middleware
async def login_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With OPP_CI_WEB_REQUIRE_LOGIN=1, every page but the login page needs an admin session."""
    if (
        not request.app[SETTINGS].web_require_login
        or request.path in PUBLIC_PATHS
        or request.path.startswith(PUBLIC_PREFIXES)
    ):
        return await handler(request)
    if await current_admin(request) is None:
        if request.method in ("GET", "HEAD"):
            raise web.HTTPSeeOther(login_url(request.path_qs))
        return await error_page(request, 403, LOGIN_MESSAGE, "Admin login needed")
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/api/"):
        return
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.content_type == "text/html":
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Cache-Control", "no-store")


def setup_web(app: web.Application) -> None:
    """Templates (autoescaped), static files, sessions, error pages and the login gate."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        default_helpers=False,
    )
    env.filters.update(FILTERS)
    # GitHub's web site for links to repositories, commits and PRs (github.com, or a GitHub Enterprise host).
    env.globals["github_web"] = github_web_url(app[SETTINGS].github_base_url)
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=True)
    setup_sessions(app)
    app.middlewares.append(html_errors)
    app.middlewares.append(login_gate)
    app.on_response_prepare.append(_security_headers)
