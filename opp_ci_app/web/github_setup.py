"""`/github/setup`: register the GitHub App from app.yml through GitHub's manifest flow."""

from __future__ import annotations

import json
import logging
import re

from aiohttp import web
from multidict import MultiDictProxy

from ..appkeys import HTTP_SESSION, SERVICES, SETTINGS
from ..github.manifest import (
    CALLBACK_PATH,
    ManifestError,
    PendingStates,
    exchange_code,
    load_manifest,
    load_stored_app,
    new_app_url,
    store_app,
)
from .common import admin_form, admin_page, error_page, render

log = logging.getLogger(__name__)

routes = web.RouteTableDef()
STATES = web.AppKey("manifest_states", PendingStates)
ORGANIZATION_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
CODE_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


@routes.get("/github/setup")
@admin_page
async def setup_page(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    try:
        stored = load_stored_app(settings)
    except Exception:  # an unreadable var/ file is shown as "not registered"; serve logs the details
        stored = None
    return await render(
        request,
        "github_setup.html",
        {"settings": settings, "stored": stored, "mode": _mode(settings), "error": None, "organization": ""},
    )


@routes.post("/github/setup")
@admin_form
async def start(request: web.Request, form: MultiDictProxy) -> web.Response:
    """Build the manifest and hand the browser a form that posts it to GitHub."""
    settings = request.app[SETTINGS]
    account = form.get("account", "user")
    organization = (form.get("organization") or "").strip()
    error = None
    if account == "organization" and not ORGANIZATION_RE.match(organization):
        error = "Enter the organization's login (letters, digits and hyphens), e.g. inet-framework."
    try:
        manifest = load_manifest(settings)
    except ManifestError as exc:
        error = str(exc)
    if error:
        context = {"settings": settings, "stored": None, "mode": _mode(settings), "error": error, "organization": organization}
        return await render(request, "github_setup.html", context, status=422)
    state = request.app[STATES].new()
    target = new_app_url(settings, organization if account == "organization" else None, state)
    return await render(
        request,
        "github_setup_go.html",
        {"target": target, "manifest_json": json.dumps(manifest), "manifest": manifest},
    )


@routes.get(CALLBACK_PATH)
async def callback(request: web.Request) -> web.Response:
    """GitHub sends the browser back here with a one-time code; the `state` proves an admin started it."""
    settings = request.app[SETTINGS]
    code, state = request.query.get("code", ""), request.query.get("state")
    if not request.app[STATES].take(state):
        return await error_page(
            request, 403, "This App registration was not started here, or it expired. Start again from the GitHub App page."
        )
    if not CODE_RE.match(code):
        return await error_page(request, 400, "GitHub's answer carried no usable code. Start again from the GitHub App page.")
    try:
        answer = await exchange_code(request.app[HTTP_SESSION], settings, code)
        stored = store_app(settings, answer)
    except ManifestError as exc:
        return await error_page(request, 502, str(exc), "GitHub App not registered")
    settings.use_github_app(stored.app_id, stored.private_key, stored.webhook_secret)
    auth = request.app[SERVICES].get("github_auth")
    if auth is not None:
        auth.configure(app_id=stored.app_id, private_key=stored.private_key)
    log.info("switched to App mode with the GitHub App %s (id %s)", stored.slug, stored.app_id)
    return await render(request, "github_setup_done.html", {"stored": stored, "settings": settings})


def _mode(settings) -> str:
    if settings.app_mode:
        return f"GitHub App (id {settings.github_app_id})"
    if settings.github_token:
        return "webhook with a token (OPP_CI_GITHUB_TOKEN)"
    return "no GitHub credentials yet"


def setup(app: web.Application) -> None:
    """Register the App setup pages (after the web pages, whose templates and sessions they use)."""
    app[STATES] = PendingStates()
    app.router.add_routes(routes)
