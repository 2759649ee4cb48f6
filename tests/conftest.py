"""Shared fixtures: a migrated database on SQLite and (when configured) PostgreSQL, the app, tokens."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from opp_ci_app import tokens
from opp_ci_app.app import create_app
from opp_ci_app.config import Settings
from opp_ci_app.db import create_engine, sessionmaker, upgrade
from opp_ci_app.models import Base, Role

# Fixtures of each area live beside their tests; conftest only lists them.
pytest_plugins = ["tests.plugins.fake_github", "tests.plugins.browser"]

PG_URL = os.environ.get("OPP_CI_TEST_DATABASE_URL")
WEBHOOK_SECRET = "It's a Secret to Everybody"
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


def run_in_thread(make_coro):
    """Run a coroutine to completion on its own loop, even when called from inside a loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()


def pytest_configure(config):
    config.addinivalue_line("markers", "postgresql: runs on the PostgreSQL named by OPP_CI_TEST_DATABASE_URL")
    config.addinivalue_line("markers", "browser: drives Debian's Chromium through Playwright")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """A migrated SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("template") / "template.db"

    async def migrate():
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        await upgrade(engine)
        await engine.dispose()

    run_in_thread(migrate)
    return path


@pytest.fixture(scope="session")
def postgresql_migrated() -> str:
    """The test PostgreSQL, emptied and migrated once per session."""
    if not PG_URL:
        pytest.skip("OPP_CI_TEST_DATABASE_URL is not set")

    async def migrate():
        engine = create_engine(PG_URL)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await upgrade(engine)
        await engine.dispose()

    run_in_thread(migrate)
    return PG_URL


async def _truncate_postgresql(url: str) -> None:
    engine = create_engine(url)
    names = ", ".join(t.name for t in Base.metadata.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    await engine.dispose()


@pytest.fixture(params=DATABASES)
async def database_url(request, tmp_path) -> str:
    """A freshly migrated, empty database: SQLite always, PostgreSQL when configured."""
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "opp_ci.db"
        shutil.copy(template, path)
        return f"sqlite+aiosqlite:///{path}"
    url = request.getfixturevalue("postgresql_migrated")
    await _truncate_postgresql(url)
    return url


@pytest.fixture
async def engine(database_url):
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def db(engine):
    """An async_sessionmaker on the test database."""
    return sessionmaker(engine)


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(
        database_url=database_url,
        webhook_secret=WEBHOOK_SECRET,
        public_url="http://ci.example.test",
        var_dir=tmp_path / "var",
    )


@pytest.fixture
async def client(aiohttp_client, settings, engine):
    """The app under test, without background tasks, on a real loopback server."""
    app = create_app(settings, engine=engine, background=False)
    return await aiohttp_client(app)


@pytest.fixture
def make_token(db):
    """Create an API token with a role and return the secret."""

    async def make(role: Role | str = Role.ADMIN, name: str | None = None) -> str:
        async with db.begin() as session:
            _row, secret = await tokens.create_token(session, role, name)
        return secret

    return make


@pytest.fixture
async def admin_headers(make_token) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_token(Role.ADMIN)}"}


@pytest.fixture
async def readonly_headers(make_token) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_token(Role.READONLY)}"}


@pytest.fixture
def opp_ci(database_url, monkeypatch, capsys, tmp_path):
    """Run `opp_ci ARGS...` in-process on the test database; returns (exit code, stdout, stderr)."""
    from opp_ci_app.cli import main

    monkeypatch.setenv("OPP_CI_DATABASE_URL", database_url)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("OPP_CI_GITHUB_TOKEN", "OPP_CI_PUBLIC_URL", "OPP_CI_GITHUB_STATUS_CONTEXT"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as info:
            main(list(args))
        out, err = capsys.readouterr()
        return info.value.code, out, err

    return run
