"""The fake GitHub shared by every test: a real aiohttp server on 127.0.0.1 that answers like api.github.com.

Fixtures
--------
``fake_github`` (function scope): a running :class:`FakeGitHub`. At teardown the test fails if any request
violated GitHub's API description (``fake.violations`` not empty; clear it in a test that sends bad
requests on purpose).

``github_settings``: the ``settings`` fixture pointed at the fake in token mode
(``github_token="ghp_test"``, ``github_actions_token="ghs_actions_test"``).

``github_clock``: a :class:`Clock` (call it for an aware datetime, ``.advance(seconds)``, ``.epoch()``), starting
one second ahead of real time so that everything queued so far is due.

``make_sender(settings=None, auth=None, app=None, **kwargs)``: a :class:`opp_ci_app.github.sender.Sender` on the
test database and the fake (``github_settings`` by default; ``app=`` takes the sessionmaker and credentials of an
app built by ``create_app``), driven by ``github_clock`` and never sleeping. ``await drain(sender, clock)`` (a
function in this module) runs it until nothing is left to send, moving the clock to each retry time.

What the fake knows
-------------------
- ``fake.url``: the base URL (use as ``OPP_CI_GITHUB_BASE_URL`` / ``settings.github_base_url``).
- Tokens: ``fake.tokens`` maps each accepted token to the login it acts as (``ghp_test`` -> ``fake.user_login``,
  ``ghs_actions_test`` -> ``github-actions[bot]``, minted installation tokens -> ``<slug>[bot]``). Any other
  token gets 401 ``Bad credentials``. ``Authorization: token X`` and ``Bearer X`` are both accepted.
- App mode: ``fake.set_app(app_id=1234, slug="opp-ci", installation_id=4242)`` generates an RSA key pair
  (``fake.app_private_key_pem``, ``fake.app_public_key_pem``). ``GET /app``, ``GET /repos/{o}/{r}/installation``
  and ``POST /app/installations/{id}/access_tokens`` need a JWT that verifies with the public key (RS256,
  ``iss`` = app id, lifetime at most 10 minutes). Minted tokens: ``fake.minted`` (list of dicts with
  ``installation_id``, ``token``, ``expires_at``); lifetime ``fake.token_lifetime`` seconds (3600).
  ``fake.installations`` maps ``"owner/repo"`` (lower case) to an installation id; repos not in it answer
  with ``fake.default_installation_id`` (None: 404, the App is not installed there).
- ``POST /app-manifests/{code}/conversions``: every code works once; it calls ``set_app()`` and answers
  201 with ``id``, ``slug``, ``pem``, ``webhook_secret``, ``client_id``, ``client_secret``. Codes in
  ``fake.bad_manifest_codes`` answer 404.
- Repositories: ``fake.set_repo(owner, repo, default_branch="master")``; unknown repos exist with
  default branch ``master``. ``fake.set_pr(owner, repo, number, head_sha=..., head_ref=..., **extra)``;
  ``GET .../pulls/{n}`` and ``GET .../commits/{ref}`` answer with an ETag and 304 on ``If-None-Match``.
- Issue comments: ``fake.add_comment(owner, repo, number, body, login)`` seeds one;
  ``fake.comments(owner, repo, number)`` are the current ones (``{"id", "body", "user": {"login"}}``),
  listed ``fake.per_page_default`` (30) a page with a ``Link`` header, ``per_page`` honoured (max 100).
- Statuses: ``fake.statuses(owner, repo, sha)`` lists the posted bodies in order.
- Workflow dispatches: answer 204; ``fake.dispatches(owner, repo)`` lists ``(workflow, body, token)``.

Recording
---------
``fake.calls`` is every request in order, each a :class:`Recorded` (``method``, ``path``, ``query``,
``headers`` with lower-case names, ``json``, ``token``, ``status`` answered). ``fake.requests(method,
path_regex)`` filters them (``re.fullmatch`` on the path).

Failures
--------
``fake.fail(method, path_pattern, status, headers=None, times=1, delay=None, body=None)``: the next
``times`` requests (``None``: all until ``fake.clear_failures()``) whose method matches and whose path
``re.fullmatch``-es ``path_pattern`` wait ``delay`` seconds, then answer ``status`` with ``headers`` and
a GitHub-style JSON ``{"message": ...}`` body (the request is not carried out). ``status=None`` carries the
request out after the delay and adds ``headers`` to the normal answer (a slow GitHub, or a quota just used up). Examples: ``fail("POST", r"/repos/.*/statuses/.*",
503, times=3)``, ``fail("POST", ..., 403, headers={"retry-after": "30"})``, ``fail("POST", ..., 429)``,
``fail("POST", ..., 403, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1700000000"})``,
``fail("POST", ..., 504, delay=2)`` for a client timeout.

Validation
----------
Every request is checked against ``/work/shared/conformance/github-rest-openapi-subset.json`` (or
``$OPP_CI_CONFORMANCE_DIR``): the method and path must exist, path parameters must have their type,
the JSON body must match the request body schema (required fields, types, enums, no unknown top-level
fields), plus the limits GitHub enforces beyond its description (status ``description`` at most 140
characters, comment ``body`` at most 65,536). A violating request is answered 422 (404 for an unknown
path) and recorded in ``fake.violations``.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import jsonschema
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

CONFORMANCE_DIR = Path(os.environ.get("OPP_CI_CONFORMANCE_DIR", "/work/shared/conformance"))
OPENAPI_FILE = CONFORMANCE_DIR / "github-rest-openapi-subset.json"
if not OPENAPI_FILE.is_file():
    # CI lays shared/ beside the clone.
    OPENAPI_FILE = Path(__file__).resolve().parents[3] / "shared" / "conformance" / OPENAPI_FILE.name

USER_TOKEN = "ghp_test"
ACTIONS_TOKEN = "ghs_actions_test"
USER_LOGIN = "opp-ci-user"
ACTIONS_LOGIN = "github-actions[bot]"
RATE_LIMIT = 5000
JWT_MAX_LIFETIME = 600
DEFAULT_BRANCH = "master"
PER_PAGE_DEFAULT = 30
PER_PAGE_MAX = 100
# Limits GitHub enforces that its OpenAPI description does not state.
EXTRA_MAX_LENGTH = {
    ("post", "/repos/{owner}/{repo}/statuses/{sha}"): {"description": 140, "context": 255},
    ("post", "/repos/{owner}/{repo}/issues/{issue_number}/comments"): {"body": 65536},
    ("patch", "/repos/{owner}/{repo}/issues/comments/{comment_id}"): {"body": 65536},
}
PARAM = re.compile(r"\{([^}]+)\}")
BODY = web.RequestKey("body", object)
TOKEN = web.RequestKey("token", object)


@dataclasses.dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    token: str | None
    status: int = 0


@dataclasses.dataclass
class Failure:
    method: str
    pattern: re.Pattern
    status: int | None
    headers: dict[str, str]
    times: int | None
    delay: float | None
    body: Any


def _nullable_to_types(schema: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` as JSON Schema `type: [T, "null"]`, recursively."""
    if isinstance(schema, list):
        return [_nullable_to_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _nullable_to_types(v) for k, v in schema.items() if k not in ("example", "examples")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


class OpenApi:
    """The OpenAPI subset: find the operation of a request and check it."""

    def __init__(self, path: Path) -> None:
        spec = json.loads(path.read_text(encoding="utf-8"))
        self.operations: list[tuple[re.Pattern, str, str, dict]] = []
        for template, item in spec["paths"].items():
            regex = re.compile("^" + PARAM.sub(r"(?P<\1>[^/]+)", template) + "$")
            for method, operation in item.items():
                if method in ("get", "post", "patch", "put", "delete"):
                    self.operations.append((regex, template, method, operation))
        # Literal paths first, so `/app/installations` does not match a `{param}` template.
        self.operations.sort(key=lambda op: op[1].count("{"))

    def find(self, method: str, path: str) -> tuple[str, dict, dict[str, str]] | None:
        for regex, template, op_method, operation in self.operations:
            match = regex.match(path)
            if match and op_method == method.lower():
                return template, operation, match.groupdict()
        return None

    def check(self, method: str, path: str, content_type: str, raw: bytes, body: Any) -> list[str]:
        """What is wrong with this request, as GitHub would see it."""
        found = self.find(method, path)
        if found is None:
            return [f"{method} {path}: no such operation in the GitHub API description"]
        template, operation, params = found
        problems = []
        for param in operation.get("parameters", []):
            if param.get("in") == "path" and param.get("schema", {}).get("type") == "integer":
                if not params.get(param["name"], "").isdigit():
                    problems.append(f"{method} {path}: path parameter {param['name']} must be an integer")
        request_body = operation.get("requestBody")
        if not raw:
            if request_body and request_body.get("required"):
                problems.append(f"{method} {template}: request body required")
            return problems
        if request_body is None:
            return problems + [f"{method} {template}: takes no request body"]
        if not content_type.startswith("application/json"):
            return problems + [f"{method} {template}: content type {content_type!r} is not application/json"]
        if body is _UNDECODABLE:
            return problems + [f"{method} {template}: body is not JSON"]
        schema = _nullable_to_types(request_body["content"]["application/json"]["schema"])
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for error in jsonschema.Draft4Validator(schema).iter_errors(body):
            where = "/".join(str(p) for p in error.absolute_path) or "body"
            problems.append(f"{method} {template}: {where}: {error.message}")
        for field, limit in EXTRA_MAX_LENGTH.get((method.lower(), template), {}).items():
            value = body.get(field) if isinstance(body, dict) else None
            if isinstance(value, str) and len(value) > limit:
                problems.append(f"{method} {template}: {field} is too long (maximum is {limit} characters)")
        return problems


_UNDECODABLE = object()
_OPENAPI: OpenApi | None = None


def openapi() -> OpenApi:
    global _OPENAPI
    if _OPENAPI is None:
        _OPENAPI = OpenApi(OPENAPI_FILE)
    return _OPENAPI


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _etag(data: Any) -> str:
    return '"' + hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest() + '"'


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


def _message(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"message": message, "documentation_url": "https://docs.github.com/rest"}, status, headers)


def generate_rsa_key() -> tuple[str, str]:
    """A fresh 2048-bit RSA key pair as (private PEM, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private, public


class FakeGitHub:
    """A small GitHub: see the module docstring for what it answers and how to script it."""

    def __init__(self) -> None:
        self.url = ""
        # Called with each answered request (the standalone fake prints them).
        self.on_call = None
        self.calls: list[Recorded] = []
        self.violations: list[str] = []
        self.user_login = USER_LOGIN
        self.tokens: dict[str, str] = {USER_TOKEN: USER_LOGIN, ACTIONS_TOKEN: ACTIONS_LOGIN}
        self.per_page_default = PER_PAGE_DEFAULT
        self.token_lifetime = 3600
        self.minted: list[dict[str, Any]] = []
        self.app_id: int | None = None
        self.app_slug: str | None = None
        self.app_private_key_pem: str | None = None
        self.app_public_key_pem: str | None = None
        self.installations: dict[str, int] = {}
        self.default_installation_id: int | None = None
        self.bad_manifest_codes: set[str] = set()
        self._used_manifest_codes: set[str] = set()
        self._repos: dict[str, dict[str, Any]] = {}
        self._prs: dict[tuple[str, int], dict[str, Any]] = {}
        self._statuses: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._comments: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self._dispatches: dict[str, list[tuple[str, Any, str | None]]] = {}
        self._failures: list[Failure] = []
        self._ids = itertools.count(1000)
        self._runner: web.AppRunner | None = None

    # -- set-up -------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # A client that gave up (timeout, killed process) ends its request here too; no waiting at shutdown.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def set_app(
        self,
        app_id: int = 1234,
        slug: str = "opp-ci",
        installation_id: int | None = 4242,
        private_key_pem: str | None = None,
        public_key_pem: str | None = None,
    ) -> str:
        """Make the fake a GitHub App installed everywhere as `installation_id`; returns the private PEM."""
        if private_key_pem is None:
            private_key_pem, public_key_pem = generate_rsa_key()
        elif public_key_pem is None:
            key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
            public_key_pem = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
        self.app_id, self.app_slug = app_id, slug
        self.app_private_key_pem, self.app_public_key_pem = private_key_pem, public_key_pem
        self.default_installation_id = installation_id
        return private_key_pem

    @property
    def bot_login(self) -> str:
        return f"{self.app_slug}[bot]"

    def set_repo(self, owner: str, repo: str, default_branch: str = DEFAULT_BRANCH, **extra: Any) -> None:
        self._repos[self._repo_key(owner, repo)] = {"default_branch": default_branch, **extra}

    def set_pr(self, owner: str, repo: str, number: int, head_sha: str = "a" * 40, head_ref: str = "topic", **extra):
        self._prs[(self._repo_key(owner, repo), number)] = {"head_sha": head_sha, "head_ref": head_ref, **extra}

    def add_comment(self, owner: str, repo: str, number: int, body: str, login: str) -> dict[str, Any]:
        """Seed a comment written by `login`."""
        comment = self._new_comment(owner, repo, number, body, login)
        self._comments.setdefault((self._repo_key(owner, repo), number), []).append(comment)
        return copy.deepcopy(comment)

    def fail(
        self,
        method: str,
        path_pattern: str,
        status: int | None,
        headers: dict[str, str] | None = None,
        times: int | None = 1,
        delay: float | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next `times` matching requests with `status` (after `delay` seconds)."""
        self._failures.append(
            Failure(method.upper(), re.compile(path_pattern), status, dict(headers or {}), times, delay, body)
        )

    def clear_failures(self) -> None:
        self._failures.clear()

    # -- inspection ---------------------------------------------------------------------------

    def requests(self, method: str, path_regex: str) -> list[Recorded]:
        pattern = re.compile(path_regex)
        return [c for c in self.calls if c.method == method.upper() and pattern.fullmatch(c.path)]

    def statuses(self, owner: str, repo: str, sha: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self._statuses.get((self._repo_key(owner, repo), sha), []))

    def comments(self, owner: str, repo: str, number: int) -> list[dict[str, Any]]:
        return copy.deepcopy(self._comments.get((self._repo_key(owner, repo), number), []))

    def dispatches(self, owner: str, repo: str) -> list[tuple[str, Any, str | None]]:
        return list(self._dispatches.get(self._repo_key(owner, repo), []))

    # -- the server ---------------------------------------------------------------------------

    @staticmethod
    def _repo_key(owner: str, repo: str) -> str:
        return f"{owner}/{repo}".lower()

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = _UNDECODABLE
        auth = request.headers.get("Authorization", "")
        token = auth.split(" ", 1)[1] if " " in auth else None
        call = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            json=None if body is _UNDECODABLE else body,
            token=token,
        )
        self.calls.append(call)
        request[BODY] = body
        request[TOKEN] = token
        problems = openapi().check(request.method, request.path, request.content_type, raw, body)
        version = request.headers.get("X-GitHub-Api-Version")
        if version is not None and version != "2022-11-28":
            problems.append(f"{request.method} {request.path}: unsupported X-GitHub-Api-Version {version!r}")
        failure = None if problems else self._matching_failure(request.method, request.path)
        if failure is not None and failure.delay:
            await asyncio.sleep(failure.delay)
        if problems:
            self.violations.extend(problems)
            unknown = openapi().find(request.method, request.path) is None
            response = _message(404 if unknown else 422, "; ".join(problems))
        elif failure is not None and failure.status is not None:
            response = _json(
                failure.body if failure.body is not None else {"message": f"scripted failure {failure.status}"},
                failure.status,
                {**self._rate_headers(token), **failure.headers},
            )
        else:
            response = await handler(request)
            for name, value in self._rate_headers(token).items():
                response.headers.setdefault(name, value)
            if failure is not None:
                response.headers.update(failure.headers)
        call.status = response.status
        if self.on_call is not None:
            self.on_call(call)
        return response

    def _matching_failure(self, method: str, path: str) -> Failure | None:
        for failure in self._failures:
            if failure.method == method and failure.pattern.fullmatch(path):
                if failure.times is not None:
                    failure.times -= 1
                    if failure.times <= 0:
                        self._failures.remove(failure)
                return failure
        return None

    def _rate_headers(self, token: str | None) -> dict[str, str]:
        used = sum(1 for c in self.calls if c.token == token)
        return {
            "x-ratelimit-limit": str(RATE_LIMIT),
            "x-ratelimit-remaining": str(max(0, RATE_LIMIT - used)),
            "x-ratelimit-reset": str(int(time.time()) + 3600),
            "x-ratelimit-used": str(used),
        }

    ROUTES = [
        ("GET", r"/user", "_get_user"),
        ("GET", r"/app", "_get_app"),
        ("POST", r"/app/installations/(?P<installation_id>\d+)/access_tokens", "_mint_token"),
        ("POST", r"/app-manifests/(?P<code>[^/]+)/conversions", "_manifest_conversion"),
        ("GET", r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)", "_get_repo"),
        ("GET", r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/installation", "_get_installation"),
        ("POST", r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/statuses/(?P<sha>[^/]+)", "_post_status"),
        ("GET", r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/issues/(?P<number>\d+)/comments", "_list_comments"),
        ("POST", r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/issues/(?P<number>\d+)/comments", "_create_comment"),
        ("GET", r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/issues/comments/(?P<comment_id>\d+)", "_get_comment"),
        ("PATCH", r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/issues/comments/(?P<comment_id>\d+)", "_edit_comment"),
        ("DELETE", r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/issues/comments/(?P<comment_id>\d+)", "_delete_comment"),
        ("GET", r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/pulls/(?P<number>\d+)", "_get_pr"),
        ("GET", r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/commits/(?P<ref>[^/]+)", "_get_commit"),
        (
            "POST",
            r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/actions/workflows/(?P<workflow>[^/]+)/dispatches",
            "_dispatch_workflow",
        ),
    ]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        for method, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, request.path)
            if match and request.method == method:
                return await getattr(self, name)(request, **match.groupdict())
        return _message(404, "Not Found")

    # -- authentication -----------------------------------------------------------------------

    def _login(self, request: web.Request) -> str | None:
        token = request[TOKEN]
        return self.tokens.get(token) if token else None

    def _check_jwt(self, request: web.Request) -> web.Response | None:
        """None when the request carries a valid App JWT, else the 401 GitHub would send."""
        token = request[TOKEN]
        if self.app_public_key_pem is None or not token:
            return _message(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(
                token,
                self.app_public_key_pem,
                algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"]},
                leeway=0,
            )
        except jwt.PyJWTError:
            return _message(401, "A JSON web token could not be decoded")
        if str(claims["iss"]) != str(self.app_id):
            return _message(401, "'Issuer' claim ('iss') must be an Integer")
        if claims["exp"] - claims["iat"] > JWT_MAX_LIFETIME or claims["iat"] > time.time() + 1:
            return _message(401, "'Expiration time' claim ('exp') is too far in the future")
        return None

    def _require_token(self, request: web.Request) -> web.Response | None:
        if self._login(request) is None:
            return _message(401, "Bad credentials")
        return None

    # -- handlers -----------------------------------------------------------------------------

    async def _get_user(self, request):
        if error := self._require_token(request):
            return error
        login = self._login(request)
        if login.endswith("[bot]"):
            return _message(403, "Resource not accessible by integration")
        return _json({"login": login, "id": 1, "type": "User"})

    async def _get_app(self, request):
        if error := self._check_jwt(request):
            return error
        return _json(
            {
                "id": self.app_id,
                "slug": self.app_slug,
                "name": self.app_slug,
                "owner": {"login": "inet-framework", "type": "Organization"},
                "permissions": {"statuses": "write", "pull_requests": "write", "issues": "write"},
                "events": ["push", "pull_request"],
            }
        )

    async def _mint_token(self, request, installation_id):
        if error := self._check_jwt(request):
            return error
        known = set(self.installations.values()) | {self.default_installation_id}
        if int(installation_id) not in known:
            return _message(404, "Not Found")
        token = f"ghs_inst{installation_id}_{next(self._ids)}"
        expires_at = _now() + dt.timedelta(seconds=self.token_lifetime)
        self.tokens[token] = self.bot_login
        self.minted.append({"installation_id": int(installation_id), "token": token, "expires_at": expires_at})
        return _json(
            {
                "token": token,
                "expires_at": _iso(expires_at),
                "permissions": {"statuses": "write", "pull_requests": "write", "issues": "write"},
                "repository_selection": "all",
            },
            201,
        )

    async def _manifest_conversion(self, request, code):
        if code in self.bad_manifest_codes or code in self._used_manifest_codes:
            return _message(404, "Not Found")
        self._used_manifest_codes.add(code)
        pem = self.set_app(app_id=self.app_id or 1234, slug=self.app_slug or "opp-ci")
        return _json(
            {
                "id": self.app_id,
                "slug": self.app_slug,
                "node_id": "MDM6QXBwNTk=",
                "name": self.app_slug,
                "owner": {"login": "inet-framework", "type": "Organization"},
                "client_id": "Iv1.8a61f9b3a7aba766",
                "client_secret": "1726be1638095a19edd134c77bde3aa2ece1e5d8",
                "webhook_secret": "e340154128314309424b7c8e90325147d99fdafa",
                "pem": pem,
                "html_url": f"https://github.com/apps/{self.app_slug}",
            },
            201,
        )

    async def _get_repo(self, request, owner, repo):
        if error := self._require_token(request):
            return error
        info = self._repos.get(self._repo_key(owner, repo), {"default_branch": DEFAULT_BRANCH})
        return _json({"name": repo, "full_name": f"{owner}/{repo}", "owner": {"login": owner}, **info})

    async def _get_installation(self, request, owner, repo):
        if error := self._check_jwt(request):
            return error
        installation_id = self.installations.get(self._repo_key(owner, repo), self.default_installation_id)
        if installation_id is None:
            return _message(404, "Not Found")
        return _json({"id": installation_id, "app_id": self.app_id, "account": {"login": owner}})

    async def _post_status(self, request, owner, repo, sha):
        if error := self._require_token(request):
            return error
        body = request[BODY]
        status = {
            "id": next(self._ids),
            "state": body["state"],
            "description": body.get("description"),
            "context": body.get("context", "default"),
            "target_url": body.get("target_url"),
            "creator": {"login": self._login(request)},
        }
        self._statuses.setdefault((self._repo_key(owner, repo), sha), []).append(status)
        return _json(status, 201)

    def _new_comment(self, owner, repo, number, body, login) -> dict[str, Any]:
        comment_id = next(self._ids)
        stamp = _iso(_now())
        return {
            "id": comment_id,
            "body": body,
            "user": {"login": login, "type": "Bot" if login.endswith("[bot]") else "User"},
            "html_url": f"https://github.com/{owner}/{repo}/pull/{number}#issuecomment-{comment_id}",
            "created_at": stamp,
            "updated_at": stamp,
        }

    def _find_comment(self, owner, repo, comment_id) -> dict[str, Any] | None:
        key = self._repo_key(owner, repo)
        for (repo_key, _number), comments in self._comments.items():
            if repo_key == key:
                for comment in comments:
                    if comment["id"] == int(comment_id):
                        return comment
        return None

    async def _list_comments(self, request, owner, repo, number):
        if error := self._require_token(request):
            return error
        comments = self._comments.get((self._repo_key(owner, repo), int(number)), [])
        try:
            per_page = min(PER_PAGE_MAX, int(request.query.get("per_page", self.per_page_default)))
            page = max(1, int(request.query.get("page", 1)))
        except ValueError:
            return _message(422, "Invalid page")
        last = max(1, -(-len(comments) // per_page))
        links = []
        base = f"{self.url}{request.path}?per_page={per_page}&page="
        if page < last:
            links += [f'<{base}{page + 1}>; rel="next"', f'<{base}{last}>; rel="last"']
        if page > 1:
            links += [f'<{base}1>; rel="first"', f'<{base}{page - 1}>; rel="prev"']
        headers = {"Link": ", ".join(links)} if links else None
        return _json(copy.deepcopy(comments[(page - 1) * per_page : page * per_page]), 200, headers)

    async def _create_comment(self, request, owner, repo, number):
        if error := self._require_token(request):
            return error
        comment = self._new_comment(owner, repo, int(number), request[BODY]["body"], self._login(request))
        self._comments.setdefault((self._repo_key(owner, repo), int(number)), []).append(comment)
        return _json(comment, 201)

    async def _get_comment(self, request, owner, repo, comment_id):
        if error := self._require_token(request):
            return error
        comment = self._find_comment(owner, repo, comment_id)
        return _json(comment) if comment else _message(404, "Not Found")

    async def _edit_comment(self, request, owner, repo, comment_id):
        if error := self._require_token(request):
            return error
        comment = self._find_comment(owner, repo, comment_id)
        if comment is None:
            return _message(404, "Not Found")
        if comment["user"]["login"] != self._login(request):
            return _message(403, "You must have push access to edit this comment")
        comment["body"] = request[BODY]["body"]
        comment["updated_at"] = _iso(_now())
        return _json(comment)

    async def _delete_comment(self, request, owner, repo, comment_id):
        if error := self._require_token(request):
            return error
        for comments in self._comments.values():
            for comment in comments:
                if comment["id"] == int(comment_id):
                    comments.remove(comment)
                    return web.Response(status=204)
        return _message(404, "Not Found")

    def _conditional(self, request: web.Request, data: dict[str, Any]) -> web.Response:
        etag = _etag(data)
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return _json(data, 200, {"ETag": etag})

    async def _get_pr(self, request, owner, repo, number):
        if error := self._require_token(request):
            return error
        pr = self._prs.get((self._repo_key(owner, repo), int(number)))
        if pr is None:
            return _message(404, "Not Found")
        extra = {k: v for k, v in pr.items() if k not in ("head_sha", "head_ref")}
        data = {
            "number": int(number),
            "state": "open",
            "head": {"sha": pr["head_sha"], "ref": pr["head_ref"], "repo": {"full_name": f"{owner}/{repo}"}},
            "base": {"ref": DEFAULT_BRANCH, "repo": {"full_name": f"{owner}/{repo}"}},
            **extra,
        }
        return self._conditional(request, data)

    async def _get_commit(self, request, owner, repo, ref):
        if error := self._require_token(request):
            return error
        sha = ref if re.fullmatch(r"[0-9a-f]{40}", ref) else hashlib.sha1(ref.encode()).hexdigest()
        return self._conditional(request, {"sha": sha, "commit": {"message": f"commit {sha[:7]}"}})

    async def _dispatch_workflow(self, request, owner, repo, workflow):
        if error := self._require_token(request):
            return error
        self._dispatches.setdefault(self._repo_key(owner, repo), []).append(
            (workflow, request[BODY], request[TOKEN])
        )
        return web.Response(status=204)


class Clock:
    """A clock for the sender and the credentials cache that moves only when told."""

    def __init__(self) -> None:
        self.now = _now() + dt.timedelta(seconds=1)

    def __call__(self) -> dt.datetime:
        return self.now

    def epoch(self) -> float:
        return self.now.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


async def drain(sender, clock: Clock, rounds: int = 100) -> int:
    """Run `sender` until no pending call is left, moving `clock` to each retry time; returns calls handled."""
    from sqlalchemy import select

    from opp_ci_app.models import CallState, GitHubCall

    handled = 0
    for _ in range(rounds):
        handled += await sender.run_once()
        async with sender.sessionmaker() as session:
            pending = (
                await session.execute(
                    select(GitHubCall.next_attempt_at, GitHubCall.leased_until).where(
                        GitHubCall.state == CallState.PENDING
                    )
                )
            ).all()
        if not pending:
            return handled
        clock.now = max(clock.now, min(max(n, leased or n) for n, leased in pending))
    raise AssertionError(f"the queue did not drain in {rounds} rounds")


@pytest.fixture
def github_clock() -> Clock:
    return Clock()


@pytest.fixture
async def github_http():
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_sender(db, github_settings, github_http, github_clock):
    """Build senders on the test database that talk to the fake GitHub."""
    from opp_ci_app.appkeys import SERVICES, SESSIONMAKER
    from opp_ci_app.github.auth import GitHubAuth
    from opp_ci_app.github.sender import Sender

    async def _no_sleep(_seconds: float) -> None:
        return None

    def make(settings=None, auth=None, app=None, **kwargs):
        sessionmaker = db
        if app is not None:
            sessionmaker = app[SESSIONMAKER]
            auth = auth or app[SERVICES]["github_auth"]
        if auth is None:
            auth = GitHubAuth.from_settings(settings or github_settings, clock=github_clock.epoch)
        kwargs.setdefault("clock", github_clock)
        kwargs.setdefault("sleep", _no_sleep)
        return Sender(sessionmaker, auth, github_http, **kwargs)

    return make


@pytest.fixture
async def fake_github():
    """A running fake GitHub; the test fails if the app sent it a request GitHub would reject."""
    fake = FakeGitHub()
    await fake.start()
    yield fake
    await fake.close()
    assert not fake.violations, "requests GitHub would reject:\n" + "\n".join(fake.violations)


@pytest.fixture
def github_settings(settings, fake_github):
    """`settings` pointing at the fake GitHub in token mode."""
    return settings.replace(
        github_base_url=fake_github.url, github_token=USER_TOKEN, github_actions_token=ACTIONS_TOKEN
    )


def _describe(call: Recorded) -> str:
    """One line per request for the standalone fake: what the app asked and what GitHub would show."""
    body = call.json if isinstance(call.json, dict) else {}
    detail = ""
    if "/statuses/" in call.path:
        detail = f"  {body.get('context')}: {body.get('state')} ({body.get('description')})"
    elif "/comments" in call.path and "body" in body:
        detail = f"  comment of {len(body['body'])} characters"
    elif call.path.endswith("/dispatches"):
        detail = f"  workflow_dispatch on {body.get('ref')}"
    return f"{call.status} {call.method} {call.path}{detail}"


def main() -> None:
    """Serve the fake GitHub on 127.0.0.1 to try the app by hand: `python -m tests.plugins.fake_github`."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=9000, help="port on 127.0.0.1 [9000]")
    args = parser.parse_args()

    async def serve() -> None:
        fake = FakeGitHub()
        fake.on_call = lambda call: print(_describe(call), flush=True)
        await fake.start(args.port)
        print(f"fake GitHub on {fake.url}; start the app with", flush=True)
        print(f"  OPP_CI_GITHUB_BASE_URL={fake.url} OPP_CI_GITHUB_TOKEN={USER_TOKEN} "
              f"OPP_CI_GITHUB_ACTIONS_TOKEN={ACTIONS_TOKEN} make run", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await fake.close()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
